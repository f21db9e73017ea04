//! Decode errors and the NOTIFICATION codes they map to (RFC 4271 §4.5 and §6,
//! RFC 6608 FSM subcodes, RFC 4486 Cease subcodes, RFC 7606 error handling).

use crate::msg::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 7313).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
    /// ROUTE-REFRESH Message Error (RFC 7313).
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Message Header Error subcodes.
pub mod header {
    /// Connection Not Synchronized.
    pub const NOT_SYNCHRONIZED: u8 = 1;
    /// Bad Message Length.
    pub const BAD_LENGTH: u8 = 2;
    /// Bad Message Type.
    pub const BAD_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes.
pub mod open {
    /// Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// Bad BGP Identifier.
    pub const BAD_BGP_ID: u8 = 3;
    /// Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPT_PARAM: u8 = 4;
    /// Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
}

/// UPDATE Message Error subcodes.
pub mod update {
    /// Malformed Attribute List.
    pub const MALFORMED_ATTR_LIST: u8 = 1;
    /// Unrecognized Well-known Attribute.
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    /// Missing Well-known Attribute.
    pub const MISSING_WELL_KNOWN: u8 = 3;
    /// Attribute Flags Error.
    pub const ATTR_FLAGS: u8 = 4;
    /// Attribute Length Error.
    pub const ATTR_LENGTH: u8 = 5;
    /// Invalid ORIGIN Attribute.
    pub const INVALID_ORIGIN: u8 = 6;
    /// Invalid NEXT_HOP Attribute.
    pub const INVALID_NEXT_HOP: u8 = 8;
    /// Optional Attribute Error.
    pub const OPTIONAL_ATTR: u8 = 9;
    /// Invalid Network Field.
    pub const INVALID_NETWORK: u8 = 10;
    /// Malformed AS_PATH.
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// FSM Error subcodes (RFC 6608).
pub mod fsm {
    /// Receive Unexpected Message in OpenSent State.
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    /// Receive Unexpected Message in OpenConfirm State.
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    /// Receive Unexpected Message in Established State.
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

/// Cease subcodes (RFC 4486).
pub mod cease {
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Connection Collision Resolution.
    pub const COLLISION: u8 = 7;
}

/// A message that cannot be accepted: the session is reset with the NOTIFICATION
/// [`DecodeError::notification`] gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The marker is not all ones.
    #[error("connection not synchronized (bad marker)")]
    NotSynchronized,
    /// Length field out of range for the type.
    #[error("bad message length {0}")]
    BadLength(u16),
    /// Unknown message type.
    #[error("bad message type {0}")]
    BadType(u8),
    /// OPEN with a version other than 4.
    #[error("unsupported BGP version {0}")]
    UnsupportedVersion(u8),
    /// The peer's AS is not the configured one.
    #[error("bad peer AS {0}")]
    BadPeerAs(u32),
    /// BGP Identifier 0 or equal to ours on iBGP.
    #[error("bad BGP identifier {0}")]
    BadBgpId(std::net::Ipv4Addr),
    /// An OPEN optional parameter other than capabilities.
    #[error("unsupported optional parameter {0}")]
    UnsupportedOptionalParameter(u8),
    /// Hold time 1 or 2.
    #[error("unacceptable hold time {0}")]
    UnacceptableHoldTime(u16),
    /// OPEN body shorter than its fixed part or parameters overrunning it.
    #[error("malformed OPEN")]
    MalformedOpen,
    /// Lengths inside an UPDATE are inconsistent so attributes cannot be located
    /// (RFC 7606 §4: session reset).
    #[error("malformed attribute list")]
    MalformedAttributeList,
    /// A well-known attribute this speaker does not know (RFC 4271 §6.3).
    #[error("unrecognized well-known attribute type {type_code}")]
    UnrecognizedWellKnown {
        /// The attribute type code.
        type_code: u8,
        /// The whole attribute (flags, type, length, value), sent back as data.
        data: Vec<u8>,
    },
    /// MP_REACH_NLRI / MP_UNREACH_NLRI malformed or repeated: NLRI cannot be located
    /// (RFC 7606 §3 j, §5.3).
    #[error("malformed MP_REACH/MP_UNREACH attribute (type {0})")]
    MalformedMp(u8),
    /// A malformed NLRI or withdrawn-routes field (RFC 7606 §5.3: session reset).
    #[error("invalid network field")]
    InvalidNetworkField,
    /// ROUTE-REFRESH with a length other than 23 (RFC 7313).
    #[error("bad ROUTE-REFRESH length {0}")]
    BadRouteRefreshLength(u16),
}

impl DecodeError {
    /// The NOTIFICATION to send before closing.
    pub fn notification(&self) -> Notification {
        let n = |c, s, d: Vec<u8>| Notification {
            code: c,
            subcode: s,
            data: d,
        };
        match self {
            DecodeError::NotSynchronized => n(code::HEADER, header::NOT_SYNCHRONIZED, vec![]),
            DecodeError::BadLength(l) => {
                n(code::HEADER, header::BAD_LENGTH, l.to_be_bytes().to_vec())
            }
            DecodeError::BadType(t) => n(code::HEADER, header::BAD_TYPE, vec![*t]),
            DecodeError::UnsupportedVersion(_) => {
                n(code::OPEN, open::UNSUPPORTED_VERSION, vec![0, 4])
            }
            DecodeError::BadPeerAs(_) => n(code::OPEN, open::BAD_PEER_AS, vec![]),
            DecodeError::BadBgpId(_) => n(code::OPEN, open::BAD_BGP_ID, vec![]),
            DecodeError::UnsupportedOptionalParameter(_) => {
                n(code::OPEN, open::UNSUPPORTED_OPT_PARAM, vec![])
            }
            DecodeError::UnacceptableHoldTime(_) => {
                n(code::OPEN, open::UNACCEPTABLE_HOLD_TIME, vec![])
            }
            DecodeError::MalformedOpen => n(code::OPEN, 0, vec![]),
            DecodeError::MalformedAttributeList | DecodeError::MalformedMp(_) => {
                n(code::UPDATE, update::MALFORMED_ATTR_LIST, vec![])
            }
            DecodeError::UnrecognizedWellKnown { data, .. } => {
                n(code::UPDATE, update::UNRECOGNIZED_WELL_KNOWN, data.clone())
            }
            DecodeError::InvalidNetworkField => n(code::UPDATE, update::INVALID_NETWORK, vec![]),
            DecodeError::BadRouteRefreshLength(l) => {
                n(code::ROUTE_REFRESH, 1, l.to_be_bytes().to_vec())
            }
        }
    }
}

/// How RFC 7606 says a malformed attribute is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorAction {
    /// The UPDATE's announced routes are treated as withdrawn (RFC 7606 §2).
    TreatAsWithdraw,
    /// The attribute is dropped and the UPDATE processed without it.
    AttributeDiscard,
}

/// What was wrong with one attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttrErrorKind {
    /// Optional/Transitive flags conflict with the attribute's definition.
    Flags,
    /// The length is wrong for the attribute, or overruns the attribute list.
    Length,
    /// ORIGIN value undefined.
    InvalidOrigin,
    /// NEXT_HOP is not a usable unicast address.
    InvalidNextHop,
    /// AS_PATH segments malformed, or the first AS is not the eBGP peer's.
    MalformedAsPath,
    /// A mandatory well-known attribute is missing.
    Missing,
    /// The same attribute appeared twice (all but the first are discarded).
    Duplicate,
}

/// A malformed attribute and the action taken (RFC 7606).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AttrError {
    /// Attribute type code (for `Missing`, the missing one).
    pub type_code: u8,
    /// What was wrong.
    pub kind: AttrErrorKind,
    /// What was done about it.
    pub action: ErrorAction,
}

impl AttrError {
    /// The UPDATE Message Error subcode RFC 4271 would have sent (for logs and counters).
    pub fn rfc4271_subcode(&self) -> u8 {
        match self.kind {
            AttrErrorKind::Flags => update::ATTR_FLAGS,
            AttrErrorKind::Length => update::ATTR_LENGTH,
            AttrErrorKind::InvalidOrigin => update::INVALID_ORIGIN,
            AttrErrorKind::InvalidNextHop => update::INVALID_NEXT_HOP,
            AttrErrorKind::MalformedAsPath => update::MALFORMED_AS_PATH,
            AttrErrorKind::Missing => update::MISSING_WELL_KNOWN,
            AttrErrorKind::Duplicate => update::MALFORMED_ATTR_LIST,
        }
    }
}

impl std::fmt::Display for AttrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "attribute {} {:?} -> {:?}",
            self.type_code, self.kind, self.action
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_carry_rfc_codes() {
        let n = DecodeError::BadLength(5000).notification();
        assert_eq!((n.code, n.subcode, n.data), (1, 2, vec![0x13, 0x88]));
        let n = DecodeError::BadType(9).notification();
        assert_eq!((n.code, n.subcode, n.data), (1, 3, vec![9]));
        let n = DecodeError::UnsupportedVersion(3).notification();
        assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));
        let n = DecodeError::UnrecognizedWellKnown {
            type_code: 99,
            data: vec![0x40, 99, 0],
        }
        .notification();
        assert_eq!((n.code, n.subcode, n.data), (3, 2, vec![0x40, 99, 0]));
        assert_eq!(DecodeError::InvalidNetworkField.notification().subcode, 10);
        assert_eq!(DecodeError::MalformedMp(14).notification().subcode, 1);
        let a = AttrError {
            type_code: 3,
            kind: AttrErrorKind::InvalidNextHop,
            action: ErrorAction::TreatAsWithdraw,
        };
        assert_eq!(a.rfc4271_subcode(), 8);
    }
}
