//! libFuzzer entry of `ethernet`; the body is `bodies/ethernet.rs` (also run on stable by
//! the crate's `tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/ethernet.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
