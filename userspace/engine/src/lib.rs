//! ferroplane-engine (being built).
