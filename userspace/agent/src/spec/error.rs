//! The error of loading, parsing or validating a spec: it names the offending field.

use std::path::PathBuf;

/// An error loading or validating a node spec.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema (unknown key, wrong type, bad address).
    #[error("{path}: {message}")]
    Yaml {
        /// Path of the offending field (`node.podCIDR`, `pods[1].ip`), or `.` for the document.
        path: String,
        /// What the YAML parser reported, with the line and column when known.
        message: String,
    },
    /// The document parsed but is semantically invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field (`pods[1].ip`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// The path of the field the error is about (`.` for the whole document, empty for I/O errors).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Io { .. } => "",
            ConfigError::Yaml { path, .. } => path,
            ConfigError::Invalid { field, .. } => field,
        }
    }

    pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
