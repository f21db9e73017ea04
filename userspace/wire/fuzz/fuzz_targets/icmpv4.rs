//! libFuzzer entry of `icmpv4`; the body is `bodies/icmpv4.rs` (also run on stable by
//! the crate's `tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/icmpv4.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
