//! Reading YAML into a typed document, with errors that name the offending field.
//!
//! The parser is serde-saphyr (see the workspace Cargo.toml for why); serde_path_to_error
//! records where in the document deserialisation stopped (`node.podCIDR`, `pods[1].ip`).

use serde::de::DeserializeOwned;

use super::ConfigError;

/// Parses one YAML document into `T`. On error, [`ConfigError::Yaml`] carries the path of
/// the offending field (`.` when the error is about the document as a whole, e.g. a syntax
/// error after the last field) and the parser's message with its line and column.
///
/// A document with nothing but blank lines and comments reads as an empty mapping, so
/// the error names the first required field that is missing (serde-saphyr itself only
/// says "unexpected end of input").
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let text = if is_blank(text) { "{}" } else { text };
    let mut path = None;
    // One-line messages: the snippet of the source that serde-saphyr can add spans lines.
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| ConfigError::Yaml {
        path: path.unwrap_or_else(|| ".".to_string()),
        message: e.to_string(),
    })
}

/// Whether a document holds no node: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}
