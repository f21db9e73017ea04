//! ferroplane-api (being built).
