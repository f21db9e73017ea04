//! ferroplane-bpf (being built).
