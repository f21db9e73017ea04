//! ferroplane-common (being built).
