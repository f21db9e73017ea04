//! ferroplane's BGP-4 speaker.
//!
//! - Codec ([`msg`], [`update`], [`prefix`], [`error`]): every message type with the
//!   RFC's diagram above it; decode errors are typed and map onto NOTIFICATION codes
//!   ([`error::DecodeError::notification`]); malformed attributes are handled per
//!   RFC 7606 (treat-as-withdraw / attribute-discard recorded on the [`update::Update`]).
//! - [`fsm`]: the RFC 4271 state machine, without I/O.
//! - [`rib`]: Adj-RIB-In, Loc-RIB ([`loc_rib`]) with the decision process and ECMP,
//!   export rules (Adj-RIB-Out, route reflection); shared attribute sets ([`intern`]).
//! - [`speaker`]: the tokio driver (listener, one task per peer, graceful restart).
//!
//! Why an own codec rather than `netgauze-bgp-pkt` 0.13: that crate is 32k lines on
//! nom + strum + netgauze-iana, and its UPDATE parser fails the whole message on an
//! attribute error (its own source marks RFC 7606 as a TODO), while treat-as-withdraw
//! is a requirement here; the subset a node needs is small enough to own.
#![deny(missing_docs)]

pub mod error;
pub mod fsm;
pub mod intern;
pub mod loc_rib;
pub mod md5;
pub mod msg;
pub mod prefix;
pub mod prefix_map;
pub mod rib;
pub mod speaker;
pub mod update;

pub use msg::{Ctx, Message};
pub use prefix::{Afi, Nlri};
pub use speaker::{PeerConfig, PeerStatus, RouteStatus, Speaker, SpeakerConfig};
