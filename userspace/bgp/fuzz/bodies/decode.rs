//! Fuzz the BGP message decoder: any input either fails with a typed error (which
//! maps to a NOTIFICATION) or decodes to a message that encodes and decodes again to
//! the same thing. Run: `cargo +nightly fuzz run decode` in userspace/bgp/fuzz.
//!
//! The body of fuzz target `decode`: run by libFuzzer (`fuzz_targets/decode.rs`, nightly)
//! and, on stable and bounded, by the crate's `tests/fuzz.rs`.

use ferroplane_bgp::msg::{frame_len, Ctx, Message};

/// Runs the target on one input; panics on a bug.
pub fn run(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let ctx = Ctx {
        four_octet_as: flags & 1 != 0,
        ebgp: flags & 2 != 0,
        peer_as: 65001,
    };
    // Treat the input as a stream, like the session reader does.
    let mut rest = data;
    while let Ok(Some(n)) = frame_len(rest) {
        if rest.len() < n {
            break;
        }
        match Message::decode(&rest[..n], &ctx) {
            Ok(m) => {
                let again = m.to_bytes(&ctx);
                let again = Message::decode(&again, &ctx);
                if let (Message::Update(a), Ok(Message::Update(b))) = (&m, again) {
                    if a.treat_as_withdraw.is_some() || !a.discarded.is_empty() {
                        return; // the error is not carried by the re-encoding
                    }
                    assert_eq!(a.withdrawals(), b.withdrawals());
                    assert_eq!(a.announcements(), b.announcements());
                }
            }
            Err(e) => {
                let _ = e.notification().code;
            }
        }
        rest = &rest[n..];
    }
}
