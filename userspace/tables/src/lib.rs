//! ferroplane-tables (being built).
