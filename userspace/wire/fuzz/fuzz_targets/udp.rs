//! libFuzzer entry of `udp`; the body is `bodies/udp.rs` (also run on stable by
//! the crate's `tests/fuzz.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/udp.rs"]
mod body;

// libfuzzer-sys takes an identifier here, not a pattern.
fuzz_target!(|input: (u32, u32, &[u8])| {
    let (src, dst, data) = input;
    body::run(src, dst, data)
});
