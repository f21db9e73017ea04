//! libFuzzer entry of `arp`; the body is `bodies/arp.rs` (also run on stable by
//! the crate's `tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/arp.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
