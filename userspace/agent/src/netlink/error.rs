//! The plumbing layer's error and the rtnetlink error context.

use std::path::PathBuf;

/// An error from the plumbing layer.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// Opening an rtnetlink socket failed.
    #[error("opening an rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request (or the connection broke).
    #[error("{context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The rtnetlink error (its errno via [`PlumbError::errno`]).
        #[source]
        source: rtnetlink::Error,
    },
    /// No interface of that name in the namespace asked.
    #[error("interface {0} not found")]
    LinkNotFound(String),
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel state is not what it should be after a request that succeeded.
    #[error("{0}")]
    Unexpected(String),
}

impl PlumbError {
    /// The (positive) errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PlumbError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| c.get().abs()),
            _ => None,
        }
    }
}

pub(super) type Result<T, E = PlumbError> = std::result::Result<T, E>;

pub(super) trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, rtnetlink::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| PlumbError::Netlink {
            context: context(),
            source,
        })
    }
}

pub(super) fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}
