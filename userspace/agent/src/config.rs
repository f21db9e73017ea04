//! The former name of [`crate::spec`]: the node spec moved there (its types, parsing,
//! defaulting and validation). Re-exported so `config::NodeSpec` and the other paths in use
//! keep working.

pub use crate::spec::*;
