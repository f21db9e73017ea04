//! BGP messages: header, OPEN (with capabilities), KEEPALIVE, NOTIFICATION and
//! ROUTE-REFRESH. UPDATE lives in [`crate::update`].

use std::net::Ipv4Addr;

use crate::error::DecodeError;
use crate::prefix::{Afi, SAFI_UNICAST};
use crate::update::Update;

/// Length of the common header.
pub const HEADER_LEN: usize = 19;
/// Largest message (RFC 4271; extended messages are not negotiated).
pub const MAX_LEN: usize = 4096;
/// AS_TRANS (RFC 6793) used in 2-octet fields for 4-octet AS numbers.
pub const AS_TRANS: u16 = 23456;

/// Message type codes.
pub mod kind {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 5;
}

/// What the decoder needs to know about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides announced the 4-octet AS capability (AS_PATH carries 4-octet ASNs).
    pub four_octet_as: bool,
    /// The peer is in another AS.
    pub ebgp: bool,
    /// The peer's AS (RFC 7606 §7.2 checks the leftmost AS of eBGP paths).
    pub peer_as: u32,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx {
            four_octet_as: true,
            ebgp: false,
            peer_as: 0,
        }
    }
}

/// One BGP message.
#[expect(
    clippy::large_enum_variant,
    reason = "decoded one at a time and consumed at once"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefresh),
}

// Message header (RFC 4271 §4.1):
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                                                               |
// +                                                               +
// |                                                               |
// +                                                               +
// |                           Marker                              |
// +                                                               +
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |          Length               |      Type     |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// Validate the header at the start of `buf`. Returns the whole message's length, or
/// `None` when fewer than 19 octets are buffered.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if h[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::NotSynchronized);
    }
    let len = u16::from_be_bytes([h[16], h[17]]);
    let ty = h[18];
    let l = usize::from(len);
    let ok = match ty {
        kind::OPEN => (29..=MAX_LEN).contains(&l),
        kind::UPDATE => (23..=MAX_LEN).contains(&l),
        kind::NOTIFICATION => (21..=MAX_LEN).contains(&l),
        kind::KEEPALIVE => l == HEADER_LEN,
        kind::ROUTE_REFRESH => (HEADER_LEN..=MAX_LEN).contains(&l),
        t => return Err(DecodeError::BadType(t)),
    };
    if !ok {
        return Err(DecodeError::BadLength(len));
    }
    Ok(Some(l))
}

pub(crate) fn start_header(out: &mut Vec<u8>, ty: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, ty]);
    start
}

pub(crate) fn finish_header(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u16;
    out[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}

impl Message {
    /// Decode one whole message (header included; `buf.len()` must be the header's length).
    pub fn decode(buf: &[u8], ctx: &Ctx) -> Result<Message, DecodeError> {
        let len = frame_len(buf)?.ok_or(DecodeError::BadLength(buf.len() as u16))?;
        if len != buf.len() {
            return Err(DecodeError::BadLength(len as u16));
        }
        let body = &buf[HEADER_LEN..];
        match buf[18] {
            kind::OPEN => Open::decode(body).map(Message::Open),
            kind::UPDATE => Update::decode(body, ctx).map(Message::Update),
            kind::NOTIFICATION => Ok(Message::Notification(Notification::decode(body))),
            kind::KEEPALIVE => Ok(Message::Keepalive),
            kind::ROUTE_REFRESH => RouteRefresh::decode(body).map(Message::RouteRefresh),
            t => Err(DecodeError::BadType(t)),
        }
    }

    /// Append the encoded message to `out`. UPDATEs larger than 4096 octets are the
    /// caller's business (see [`crate::update::UpdateBuilder`]).
    pub fn encode(&self, out: &mut Vec<u8>, ctx: &Ctx) {
        match self {
            Message::Open(o) => o.encode(out),
            Message::Update(u) => u.encode(out, ctx),
            Message::Notification(n) => n.encode(out),
            Message::Keepalive => {
                let s = start_header(out, kind::KEEPALIVE);
                finish_header(out, s);
            }
            Message::RouteRefresh(r) => r.encode(out),
        }
    }

    /// Encoded into a fresh vector.
    pub fn to_bytes(&self, ctx: &Ctx) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v, ctx);
        v
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

// OPEN (RFC 4271 §4.2):
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+
// |    Version    |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |     My Autonomous System      |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |           Hold Time           |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                         BGP Identifier                        |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Opt Parm Len  |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                                                               |
// |             Optional Parameters (variable)                    |
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Optional parameter: | Parm. Type (1) | Parm. Length (1) | value |; type 2 holds
// capabilities (RFC 5492): | Capability Code (1) | Capability Length (1) | value |.

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet "My Autonomous System" field (AS_TRANS for 4-octet ASNs).
    pub my_as: u16,
    /// Proposed hold time in seconds (0 or >= 3).
    pub hold_time: u16,
    /// BGP Identifier.
    pub bgp_id: Ipv4Addr,
    /// Capabilities, in order of appearance.
    pub capabilities: Vec<Capability>,
}

/// Graceful restart capability (RFC 4724 §3):
///
/// ```text
/// +--------------------------------------------------+
/// | Restart Flags (4 bits)                           |
/// +--------------------------------------------------+
/// | Restart Time in seconds (12 bits)                |
/// +--------------------------------------------------+
/// | Address Family Identifier (16 bits)              |
/// +--------------------------------------------------+
/// | Subsequent Address Family Identifier (8 bits)    |
/// +--------------------------------------------------+
/// | Flags for Address Family (8 bits)                |
/// +--------------------------------------------------+
/// | ...                                              |
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted and is recovering.
    pub restarting: bool,
    /// Seconds the sender asks its peers to keep its routes.
    pub restart_time: u16,
    /// Families, with the F bit (forwarding state preserved).
    pub families: Vec<(Afi, bool)>,
}

/// A capability (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (code 1, RFC 4760), unicast SAFI only.
    Multiprotocol(Afi),
    /// Route refresh (code 2, RFC 2918).
    RouteRefresh,
    /// Graceful restart (code 64, RFC 4724).
    GracefulRestart(GracefulRestart),
    /// 4-octet AS numbers (code 65, RFC 6793).
    FourOctetAs(u32),
    /// Anything else, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Value.
        value: Vec<u8>,
    },
}

impl Capability {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Capability::Multiprotocol(afi) => {
                out.extend_from_slice(&[1, 4]);
                out.extend_from_slice(&afi.code().to_be_bytes());
                out.extend_from_slice(&[0, SAFI_UNICAST]);
            }
            Capability::RouteRefresh => out.extend_from_slice(&[2, 0]),
            Capability::GracefulRestart(gr) => {
                out.extend_from_slice(&[64, (2 + 4 * gr.families.len()) as u8]);
                let flags: u16 = if gr.restarting { 0x8000 } else { 0 };
                out.extend_from_slice(&(flags | (gr.restart_time & 0x0fff)).to_be_bytes());
                for (afi, fwd) in &gr.families {
                    out.extend_from_slice(&afi.code().to_be_bytes());
                    out.extend_from_slice(&[SAFI_UNICAST, if *fwd { 0x80 } else { 0 }]);
                }
            }
            Capability::FourOctetAs(asn) => {
                out.extend_from_slice(&[65, 4]);
                out.extend_from_slice(&asn.to_be_bytes());
            }
            Capability::Unknown { code, value } => {
                out.extend_from_slice(&[*code, value.len() as u8]);
                out.extend_from_slice(value);
            }
        }
    }

    fn decode(code: u8, v: &[u8]) -> Capability {
        let unknown = || Capability::Unknown {
            code,
            value: v.to_vec(),
        };
        match (code, v.len()) {
            (1, 4) => match Afi::from_code(u16::from_be_bytes([v[0], v[1]])) {
                Some(afi) if v[3] == SAFI_UNICAST => Capability::Multiprotocol(afi),
                _ => unknown(),
            },
            (2, 0) => Capability::RouteRefresh,
            (64, n) if n >= 2 && (n - 2) % 4 == 0 => {
                let w = u16::from_be_bytes([v[0], v[1]]);
                let families = v[2..]
                    .chunks_exact(4)
                    .filter(|c| c[2] == SAFI_UNICAST)
                    .filter_map(|c| {
                        Afi::from_code(u16::from_be_bytes([c[0], c[1]]))
                            .map(|a| (a, c[3] & 0x80 != 0))
                    })
                    .collect();
                Capability::GracefulRestart(GracefulRestart {
                    restarting: w & 0x8000 != 0,
                    restart_time: w & 0x0fff,
                    families,
                })
            }
            (65, 4) => Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            _ => unknown(),
        }
    }
}

impl Open {
    /// An OPEN for `asn` (AS_TRANS in the 2-octet field when it does not fit).
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Open {
        Open {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's AS: the 4-octet capability when present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    /// True when the sender supports 4-octet AS numbers.
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Families announced with the multiprotocol capability (IPv4 unicast implied when
    /// the capability is absent altogether, RFC 4760 §8).
    pub fn families(&self) -> Vec<Afi> {
        let v: Vec<Afi> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(a) => Some(*a),
                _ => None,
            })
            .collect();
        if v.is_empty()
            && !self
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::Unknown { code: 1, .. }))
        {
            vec![Afi::Ipv4]
        } else {
            v
        }
    }

    /// The graceful restart capability, if sent.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }

    /// True when route refresh is supported.
    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    fn decode(b: &[u8]) -> Result<Open, DecodeError> {
        if b.len() < 10 {
            return Err(DecodeError::MalformedOpen);
        }
        if b[0] != 4 {
            return Err(DecodeError::UnsupportedVersion(b[0]));
        }
        let my_as = u16::from_be_bytes([b[1], b[2]]);
        let hold_time = u16::from_be_bytes([b[3], b[4]]);
        let bgp_id = Ipv4Addr::new(b[5], b[6], b[7], b[8]);
        let opt_len = usize::from(b[9]);
        let mut p = b.get(10..10 + opt_len).ok_or(DecodeError::MalformedOpen)?;
        if 10 + opt_len != b.len() {
            return Err(DecodeError::MalformedOpen);
        }
        let mut capabilities = Vec::new();
        while !p.is_empty() {
            if p.len() < 2 {
                return Err(DecodeError::MalformedOpen);
            }
            let (ty, len) = (p[0], usize::from(p[1]));
            let mut v = p.get(2..2 + len).ok_or(DecodeError::MalformedOpen)?;
            p = &p[2 + len..];
            if ty != 2 {
                return Err(DecodeError::UnsupportedOptionalParameter(ty));
            }
            while !v.is_empty() {
                if v.len() < 2 {
                    return Err(DecodeError::MalformedOpen);
                }
                let (code, clen) = (v[0], usize::from(v[1]));
                let val = v.get(2..2 + clen).ok_or(DecodeError::MalformedOpen)?;
                capabilities.push(Capability::decode(code, val));
                v = &v[2 + clen..];
            }
        }
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::UnacceptableHoldTime(hold_time));
        }
        Ok(Open {
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let s = start_header(out, kind::OPEN);
        out.push(4);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let mut caps = Vec::new();
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        if caps.is_empty() {
            out.push(0);
        } else {
            out.push((caps.len() + 2) as u8);
            out.extend_from_slice(&[2, caps.len() as u8]);
            out.extend_from_slice(&caps);
        }
        finish_header(out, s);
    }
}

// NOTIFICATION (RFC 4271 §4.5):
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Error code    | Error subcode |   Data (variable)             |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    fn decode(b: &[u8]) -> Notification {
        Notification {
            code: b.first().copied().unwrap_or(0),
            subcode: b.get(1).copied().unwrap_or(0),
            data: b.get(2..).unwrap_or_default().to_vec(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let s = start_header(out, kind::NOTIFICATION);
        out.extend_from_slice(&[self.code, self.subcode]);
        let room = MAX_LEN - HEADER_LEN - 2;
        out.extend_from_slice(&self.data[..self.data.len().min(room)]);
        finish_header(out, s);
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::error::code;
        let name = match self.code {
            code::HEADER => "message header error",
            code::OPEN => "OPEN message error",
            code::UPDATE => "UPDATE message error",
            code::HOLD_TIMER_EXPIRED => "hold timer expired",
            code::FSM => "FSM error",
            code::CEASE => "cease",
            code::ROUTE_REFRESH => "ROUTE-REFRESH message error",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

// ROUTE-REFRESH (RFC 2918 §3):
//
//  0       7      15      23      31
// +-------+-------+-------+-------+
// |      AFI      | Res.  | SAFI  |
// +-------+-------+-------+-------+

/// A ROUTE-REFRESH message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// AFI code (kept raw: refreshes for unknown families are ignored, not errors).
    pub afi: u16,
    /// SAFI.
    pub safi: u8,
}

impl RouteRefresh {
    fn decode(b: &[u8]) -> Result<RouteRefresh, DecodeError> {
        if b.len() != 4 {
            return Err(DecodeError::BadRouteRefreshLength(
                (b.len() + HEADER_LEN) as u16,
            ));
        }
        Ok(RouteRefresh {
            afi: u16::from_be_bytes([b[0], b[1]]),
            safi: b[3],
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let s = start_header(out, kind::ROUTE_REFRESH);
        out.extend_from_slice(&self.afi.to_be_bytes());
        out.extend_from_slice(&[0, self.safi]);
        finish_header(out, s);
    }
}
