//! ferroplane-wire (being built).
