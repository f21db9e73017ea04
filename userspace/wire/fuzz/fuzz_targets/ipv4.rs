//! libFuzzer entry of `ipv4`; the body is `bodies/ipv4.rs` (also run on stable by
//! the crate's `tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/ipv4.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
