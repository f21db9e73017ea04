//! UPDATE messages and path attributes (RFC 4271 §4.3 and §5, RFC 4760, RFC 6793,
//! RFC 1997), decoded with RFC 7606 error handling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::error::{AttrError, AttrErrorKind, DecodeError, ErrorAction};
use crate::msg::{finish_header, start_header, Ctx, AS_TRANS, HEADER_LEN, MAX_LEN};
use ipnet::IpNet;

use crate::prefix::{Afi, Nlri, SAFI_UNICAST};

/// Attribute flag bits.
pub mod flag {
    /// Optional.
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial.
    pub const PARTIAL: u8 = 0x20;
    /// Extended length (2-octet length field).
    pub const EXTENDED: u8 = 0x10;
}

/// Attribute type codes.
pub mod attr {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// 0: learnt from an interior protocol.
    Igp,
    /// 1: learnt via EGP.
    Egp,
    /// 2: learnt some other way.
    Incomplete,
}

impl Origin {
    fn code(self) -> u8 {
        self as u8
    }
}

/// AS_PATH segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentKind {
    /// 1: unordered set (counts as one AS in path length).
    Set,
    /// 2: ordered sequence.
    Sequence,
    /// 3: confederation sequence (RFC 5065; not counted).
    ConfedSequence,
    /// 4: confederation set (RFC 5065; not counted).
    ConfedSet,
}

impl SegmentKind {
    fn from_code(c: u8) -> Option<SegmentKind> {
        match c {
            1 => Some(SegmentKind::Set),
            2 => Some(SegmentKind::Sequence),
            3 => Some(SegmentKind::ConfedSequence),
            4 => Some(SegmentKind::ConfedSet),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            SegmentKind::Set => 1,
            SegmentKind::Sequence => 2,
            SegmentKind::ConfedSequence => 3,
            SegmentKind::ConfedSet => 4,
        }
    }
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentKind,
    /// AS numbers (1..=255 of them).
    pub asns: Vec<u32>,
}

/// An AS_PATH (always held with 4-octet AS numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct AsPath(pub Vec<AsSegment>);

impl AsPath {
    /// Path length for the decision process (RFC 4271 §9.1.2.2 a: a set counts 1).
    pub fn len(&self) -> usize {
        self.0
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                SegmentKind::ConfedSequence | SegmentKind::ConfedSet => 0,
            })
            .sum()
    }

    /// True when there are no segments.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The neighbouring AS: the first AS of a leading sequence.
    pub fn first_as(&self) -> Option<u32> {
        self.0
            .first()
            .filter(|s| s.kind == SegmentKind::Sequence)
            .and_then(|s| s.asns.first().copied())
    }

    /// True when `asn` appears anywhere (loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.0.iter().any(|s| s.asns.contains(&asn))
    }

    /// Prepend `asn` (what an eBGP speaker does when advertising).
    pub fn prepend(&mut self, asn: u32) {
        match self.0.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => self.0.insert(
                0,
                AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    fn encode(&self, four: bool, out: &mut Vec<u8>) {
        for s in &self.0 {
            out.push(s.kind.code());
            out.push(s.asns.len() as u8);
            for a in &s.asns {
                if four {
                    out.extend_from_slice(&a.to_be_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(*a).unwrap_or(AS_TRANS).to_be_bytes());
                }
            }
        }
    }

    fn decode(mut b: &[u8], four: bool) -> Option<AsPath> {
        let w = if four { 4 } else { 2 };
        let mut segs = Vec::new();
        while !b.is_empty() {
            if b.len() < 2 {
                return None;
            }
            let kind = SegmentKind::from_code(b[0])?;
            let n = usize::from(b[1]);
            if n == 0 {
                return None;
            }
            let body = b.get(2..2 + n * w)?;
            let asns = body
                .chunks_exact(w)
                .map(|c| {
                    if four {
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    } else {
                        u32::from(u16::from_be_bytes([c[0], c[1]]))
                    }
                })
                .collect();
            segs.push(AsSegment { kind, asns });
            b = &b[2 + n * w..];
        }
        Some(AsPath(segs))
    }

    fn needs_as4(&self) -> bool {
        self.0.iter().any(|s| s.asns.iter().any(|a| *a > 0xffff))
    }

    /// RFC 6793 §4.2.3: rebuild the path from AS_PATH (2-octet) and AS4_PATH.
    fn merge_as4(self, as4: AsPath) -> AsPath {
        let (n2, n4) = (self.len(), as4.len());
        if n2 < n4 {
            return self;
        }
        let mut keep = n2 - n4;
        let mut out = Vec::new();
        for s in self.0 {
            if keep == 0 {
                break;
            }
            match s.kind {
                SegmentKind::Sequence => {
                    let take = s.asns.len().min(keep);
                    keep -= take;
                    out.push(AsSegment {
                        kind: s.kind,
                        asns: s.asns[..take].to_vec(),
                    });
                }
                SegmentKind::Set => {
                    keep -= 1;
                    out.push(s);
                }
                _ => out.push(s),
            }
        }
        out.extend(as4.0);
        AsPath(out)
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.0 {
            let list: Vec<String> = s.asns.iter().map(|a| a.to_string()).collect();
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            match s.kind {
                SegmentKind::Sequence => write!(f, "{}", list.join(" "))?,
                SegmentKind::Set => write!(f, "{{{}}}", list.join(","))?,
                SegmentKind::ConfedSequence => write!(f, "({})", list.join(" "))?,
                SegmentKind::ConfedSet => write!(f, "[{}]", list.join(","))?,
            }
        }
        Ok(())
    }
}

/// An attribute kept as received (unknown optional transitive ones are passed on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    /// Flags (the Partial bit is set when passed on unrecognised).
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value.
    pub value: Vec<u8>,
}

/// The path attributes of a route (NLRI and MP_REACH/UNREACH excluded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH (merged with AS4_PATH on 2-octet sessions).
    pub as_path: AsPath,
    /// NEXT_HOP (IPv4 NLRI).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// AGGREGATOR (AS, address).
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Other attributes passed on unchanged.
    pub other: Vec<RawAttr>,
}

impl Default for PathAttributes {
    fn default() -> PathAttributes {
        PathAttributes {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            other: Vec::new(),
        }
    }
}

/// MP_REACH_NLRI (RFC 4760 §3):
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// +---------------------------------------------------------+
/// | Subsequent Address Family Identifier (1 octet)          |
/// +---------------------------------------------------------+
/// | Length of Next Hop Network Address (1 octet)            |
/// +---------------------------------------------------------+
/// | Network Address of Next Hop (variable)                  |
/// +---------------------------------------------------------+
/// | Reserved (1 octet)                                      |
/// +---------------------------------------------------------+
/// | Network Layer Reachability Information (variable)       |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// Family (unicast SAFI).
    pub afi: Afi,
    /// Next hop (for IPv6, the global address).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop, when 32 octets were sent.
    pub link_local: Option<Ipv6Addr>,
    /// Announced prefixes.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4):
///
/// ```text
/// +---------------------------------------------------------+
/// | Address Family Identifier (2 octets)                    |
/// +---------------------------------------------------------+
/// | Subsequent Address Family Identifier (1 octet)          |
/// +---------------------------------------------------------+
/// | Withdrawn Routes (variable)                             |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// Family (unicast SAFI).
    pub afi: Afi,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<IpNet>,
}

// UPDATE (RFC 4271 §4.3):
//
// +-----------------------------------------------------+
// |   Withdrawn Routes Length (2 octets)                |
// +-----------------------------------------------------+
// |   Withdrawn Routes (variable)                       |
// +-----------------------------------------------------+
// |   Total Path Attribute Length (2 octets)            |
// +-----------------------------------------------------+
// |   Path Attributes (variable)                        |
// +-----------------------------------------------------+
// |   Network Layer Reachability Information (variable) |
// +-----------------------------------------------------+
//
// Path attribute: | Attr. Flags (1) | Attr. Type Code (1) | Length (1 or 2) | Value |

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 withdrawn routes field.
    pub withdrawn: Vec<IpNet>,
    /// Path attributes (`None` when the message has none: a pure withdrawal).
    pub attrs: Option<PathAttributes>,
    /// IPv4 NLRI field.
    pub nlri: Vec<IpNet>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// RFC 7606: the attribute error that makes this UPDATE's announcements withdrawals.
    pub treat_as_withdraw: Option<AttrError>,
    /// RFC 7606: attributes discarded while decoding.
    pub discarded: Vec<AttrError>,
}

fn put_attr(out: &mut Vec<u8>, flags: u8, ty: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | flag::EXTENDED, ty]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags & !flag::EXTENDED, ty, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

/// Expected (optional, transitive) bits of the attributes this speaker knows.
fn expected_flags(ty: u8) -> Option<u8> {
    let wk = flag::TRANSITIVE;
    let ot = flag::OPTIONAL | flag::TRANSITIVE;
    let on = flag::OPTIONAL;
    Some(match ty {
        attr::ORIGIN
        | attr::AS_PATH
        | attr::NEXT_HOP
        | attr::LOCAL_PREF
        | attr::ATOMIC_AGGREGATE => wk,
        attr::MED
        | attr::ORIGINATOR_ID
        | attr::CLUSTER_LIST
        | attr::MP_REACH
        | attr::MP_UNREACH => on,
        attr::AGGREGATOR | attr::COMMUNITIES | attr::AS4_PATH | attr::AS4_AGGREGATOR => ot,
        _ => return None,
    })
}

fn u32_at(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn ipv4_at(v: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(v[0], v[1], v[2], v[3])
}

/// A NEXT_HOP that can never be forwarded to (RFC 4271 §6.3, RFC 7606 §7.3).
pub fn bad_next_hop(ip: Ipv4Addr) -> bool {
    ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.octets()[0] >= 240
}

impl PathAttributes {
    /// Append the encoded attributes (no MP attributes) for a session.
    pub fn encode(&self, out: &mut Vec<u8>, ctx: &Ctx) {
        let wk = flag::TRANSITIVE;
        put_attr(out, wk, attr::ORIGIN, &[self.origin.code()]);
        let mut v = Vec::new();
        self.as_path.encode(ctx.four_octet_as, &mut v);
        put_attr(out, wk, attr::AS_PATH, &v);
        if let Some(nh) = self.next_hop {
            put_attr(out, wk, attr::NEXT_HOP, &nh.octets());
        }
        if let Some(m) = self.med {
            put_attr(out, flag::OPTIONAL, attr::MED, &m.to_be_bytes());
        }
        if let Some(lp) = self.local_pref {
            put_attr(out, wk, attr::LOCAL_PREF, &lp.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attr(out, wk, attr::ATOMIC_AGGREGATE, &[]);
        }
        if let Some((asn, ip)) = self.aggregator {
            let mut v = Vec::new();
            if ctx.four_octet_as {
                v.extend_from_slice(&asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            v.extend_from_slice(&ip.octets());
            put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, attr::AGGREGATOR, &v);
        }
        if !self.communities.is_empty() {
            let v: Vec<u8> = self
                .communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put_attr(
                out,
                flag::OPTIONAL | flag::TRANSITIVE,
                attr::COMMUNITIES,
                &v,
            );
        }
        if let Some(o) = self.originator_id {
            put_attr(out, flag::OPTIONAL, attr::ORIGINATOR_ID, &o.octets());
        }
        if !self.cluster_list.is_empty() {
            let v: Vec<u8> = self.cluster_list.iter().flat_map(|c| c.octets()).collect();
            put_attr(out, flag::OPTIONAL, attr::CLUSTER_LIST, &v);
        }
        if !ctx.four_octet_as && self.as_path.needs_as4() {
            let mut v = Vec::new();
            self.as_path.encode(true, &mut v);
            put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, attr::AS4_PATH, &v);
        }
        for a in &self.other {
            put_attr(out, a.flags, a.type_code, &a.value);
        }
    }
}

struct AttrDecoder<'c> {
    ctx: &'c Ctx,
    attrs: PathAttributes,
    seen: [bool; 256],
    as4_path: Option<AsPath>,
    mp_reach: Option<MpReach>,
    mp_unreach: Option<MpUnreach>,
    taw: Option<AttrError>,
    discarded: Vec<AttrError>,
}

impl AttrDecoder<'_> {
    fn withdraw(&mut self, type_code: u8, kind: AttrErrorKind) {
        if self.taw.is_none() {
            self.taw = Some(AttrError {
                type_code,
                kind,
                action: ErrorAction::TreatAsWithdraw,
            });
        }
    }

    fn discard(&mut self, type_code: u8, kind: AttrErrorKind) {
        self.discarded.push(AttrError {
            type_code,
            kind,
            action: ErrorAction::AttributeDiscard,
        });
    }

    /// Walk the attribute list. Errors are fatal (session reset); everything RFC 7606
    /// handles softer is recorded in `taw` / `discarded`.
    fn run(&mut self, mut a: &[u8]) -> Result<(), DecodeError> {
        while !a.is_empty() {
            let ext = a[0] & flag::EXTENDED != 0;
            let hdr = if ext { 4 } else { 3 };
            if a.len() < hdr {
                // RFC 7606 §4: fewer octets than an attribute header: treat-as-withdraw.
                self.withdraw(a.get(1).copied().unwrap_or(0), AttrErrorKind::Length);
                return Ok(());
            }
            let (flags, ty) = (a[0], a[1]);
            let len = if ext {
                usize::from(u16::from_be_bytes([a[2], a[3]]))
            } else {
                usize::from(a[2])
            };
            let Some(value) = a.get(hdr..hdr + len) else {
                // RFC 7606 §4: the attribute overruns the attribute list.
                if ty == attr::MP_REACH || ty == attr::MP_UNREACH {
                    return Err(DecodeError::MalformedMp(ty));
                }
                self.withdraw(ty, AttrErrorKind::Length);
                return Ok(());
            };
            let whole = &a[..hdr + len];
            a = &a[hdr + len..];
            if self.seen[usize::from(ty)] {
                if ty == attr::MP_REACH || ty == attr::MP_UNREACH {
                    return Err(DecodeError::MalformedMp(ty));
                }
                self.discard(ty, AttrErrorKind::Duplicate);
                continue;
            }
            self.seen[usize::from(ty)] = true;
            match expected_flags(ty) {
                None => {
                    if flags & flag::OPTIONAL == 0 {
                        return Err(DecodeError::UnrecognizedWellKnown {
                            type_code: ty,
                            data: whole.to_vec(),
                        });
                    }
                    if flags & flag::TRANSITIVE != 0 {
                        self.attrs.other.push(RawAttr {
                            flags: (flags | flag::PARTIAL) & !flag::EXTENDED,
                            type_code: ty,
                            value: value.to_vec(),
                        });
                    }
                    continue;
                }
                Some(want) => {
                    if flags & (flag::OPTIONAL | flag::TRANSITIVE) != want {
                        if ty == attr::MP_REACH || ty == attr::MP_UNREACH {
                            return Err(DecodeError::MalformedMp(ty));
                        }
                        self.withdraw(ty, AttrErrorKind::Flags);
                        continue;
                    }
                }
            }
            self.one(ty, value)?;
        }
        Ok(())
    }

    fn one(&mut self, ty: u8, v: &[u8]) -> Result<(), DecodeError> {
        let ctx = self.ctx;
        match ty {
            attr::ORIGIN => match v {
                [0] => self.attrs.origin = Origin::Igp,
                [1] => self.attrs.origin = Origin::Egp,
                [2] => self.attrs.origin = Origin::Incomplete,
                [_] => self.withdraw(ty, AttrErrorKind::InvalidOrigin),
                _ => self.withdraw(ty, AttrErrorKind::Length),
            },
            attr::AS_PATH => match AsPath::decode(v, ctx.four_octet_as) {
                Some(p) => self.attrs.as_path = p,
                None => self.withdraw(ty, AttrErrorKind::MalformedAsPath),
            },
            attr::NEXT_HOP => {
                if v.len() != 4 {
                    self.withdraw(ty, AttrErrorKind::Length);
                } else if bad_next_hop(ipv4_at(v)) {
                    self.withdraw(ty, AttrErrorKind::InvalidNextHop);
                } else {
                    self.attrs.next_hop = Some(ipv4_at(v));
                }
            }
            attr::MED => {
                if v.len() == 4 {
                    self.attrs.med = Some(u32_at(v));
                } else {
                    self.withdraw(ty, AttrErrorKind::Length);
                }
            }
            attr::LOCAL_PREF => {
                if ctx.ebgp {
                    // RFC 4271 §5.1.5: ignored from external peers.
                } else if v.len() == 4 {
                    self.attrs.local_pref = Some(u32_at(v));
                } else {
                    self.withdraw(ty, AttrErrorKind::Length);
                }
            }
            attr::ATOMIC_AGGREGATE => {
                if v.is_empty() {
                    self.attrs.atomic_aggregate = true;
                } else {
                    self.discard(ty, AttrErrorKind::Length);
                }
            }
            attr::AGGREGATOR => {
                let want = if ctx.four_octet_as { 8 } else { 6 };
                if v.len() != want {
                    self.discard(ty, AttrErrorKind::Length);
                } else if want == 8 {
                    self.attrs.aggregator = Some((u32_at(v), ipv4_at(&v[4..])));
                } else {
                    let asn = u32::from(u16::from_be_bytes([v[0], v[1]]));
                    self.attrs.aggregator = Some((asn, ipv4_at(&v[2..])));
                }
            }
            attr::COMMUNITIES => {
                if v.is_empty() || !v.len().is_multiple_of(4) {
                    self.withdraw(ty, AttrErrorKind::Length);
                } else {
                    self.attrs.communities = v.chunks_exact(4).map(u32_at).collect();
                }
            }
            attr::ORIGINATOR_ID => {
                if ctx.ebgp {
                    self.discard(ty, AttrErrorKind::Flags);
                } else if v.len() == 4 {
                    self.attrs.originator_id = Some(ipv4_at(v));
                } else {
                    self.withdraw(ty, AttrErrorKind::Length);
                }
            }
            attr::CLUSTER_LIST => {
                if ctx.ebgp {
                    self.discard(ty, AttrErrorKind::Flags);
                } else if v.is_empty() || !v.len().is_multiple_of(4) {
                    self.withdraw(ty, AttrErrorKind::Length);
                } else {
                    self.attrs.cluster_list = v.chunks_exact(4).map(ipv4_at).collect();
                }
            }
            attr::MP_REACH => self.mp_reach = decode_mp_reach(v)?,
            attr::MP_UNREACH => self.mp_unreach = decode_mp_unreach(v)?,
            attr::AS4_PATH if !ctx.four_octet_as => match AsPath::decode(v, true) {
                Some(p) => self.as4_path = Some(p),
                None => self.discard(ty, AttrErrorKind::MalformedAsPath),
            },
            attr::AS4_AGGREGATOR if !ctx.four_octet_as => {
                if v.len() == 8 {
                    self.attrs.aggregator = Some((u32_at(v), ipv4_at(&v[4..])));
                } else {
                    self.discard(ty, AttrErrorKind::Length);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn decode_mp_reach(v: &[u8]) -> Result<Option<MpReach>, DecodeError> {
    let bad = DecodeError::MalformedMp(attr::MP_REACH);
    if v.len() < 5 {
        return Err(bad);
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let safi = v[2];
    let nhl = usize::from(v[3]);
    let nh = v.get(4..4 + nhl).ok_or(bad.clone())?;
    let rest = v.get(5 + nhl..).ok_or(bad.clone())?;
    let Some(afi) = Afi::from_code(afi).filter(|_| safi == SAFI_UNICAST) else {
        return Ok(None); // a family this speaker never negotiates: ignored
    };
    let (next_hop, link_local) = match (afi, nhl) {
        (Afi::Ipv4, 4) => (IpAddr::V4(ipv4_at(nh)), None),
        (Afi::Ipv6, 16 | 32) => {
            let mut g = [0u8; 16];
            g.copy_from_slice(&nh[..16]);
            let ll = (nhl == 32).then(|| {
                let mut l = [0u8; 16];
                l.copy_from_slice(&nh[16..32]);
                Ipv6Addr::from(l)
            });
            (IpAddr::V6(Ipv6Addr::from(g)), ll)
        }
        _ => return Err(bad),
    };
    let nlri = crate::prefix::decode_all(rest, afi).ok_or(bad)?;
    Ok(Some(MpReach {
        afi,
        next_hop,
        link_local,
        nlri,
    }))
}

fn decode_mp_unreach(v: &[u8]) -> Result<Option<MpUnreach>, DecodeError> {
    let bad = DecodeError::MalformedMp(attr::MP_UNREACH);
    if v.len() < 3 {
        return Err(bad);
    }
    let Some(afi) =
        Afi::from_code(u16::from_be_bytes([v[0], v[1]])).filter(|_| v[2] == SAFI_UNICAST)
    else {
        return Ok(None);
    };
    let withdrawn = crate::prefix::decode_all(&v[3..], afi).ok_or(bad)?;
    Ok(Some(MpUnreach { afi, withdrawn }))
}

impl Update {
    /// Decode an UPDATE body (after the 19-octet header).
    pub fn decode(b: &[u8], ctx: &Ctx) -> Result<Update, DecodeError> {
        if b.len() < 4 {
            return Err(DecodeError::MalformedAttributeList);
        }
        let wlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let w = b
            .get(2..2 + wlen)
            .ok_or(DecodeError::MalformedAttributeList)?;
        let al = b
            .get(2 + wlen..4 + wlen)
            .ok_or(DecodeError::MalformedAttributeList)?;
        let alen = usize::from(u16::from_be_bytes([al[0], al[1]]));
        let a = b
            .get(4 + wlen..4 + wlen + alen)
            .ok_or(DecodeError::MalformedAttributeList)?;
        let n = &b[4 + wlen + alen..];
        let withdrawn =
            crate::prefix::decode_all(w, Afi::Ipv4).ok_or(DecodeError::InvalidNetworkField)?;
        let nlri =
            crate::prefix::decode_all(n, Afi::Ipv4).ok_or(DecodeError::InvalidNetworkField)?;
        let mut d = AttrDecoder {
            ctx,
            attrs: PathAttributes::default(),
            seen: [false; 256],
            as4_path: None,
            mp_reach: None,
            mp_unreach: None,
            taw: None,
            discarded: Vec::new(),
        };
        d.run(a)?;
        let announces = !nlri.is_empty() || d.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
        if announces {
            for ty in [attr::ORIGIN, attr::AS_PATH] {
                if !d.seen[usize::from(ty)] {
                    d.withdraw(ty, AttrErrorKind::Missing);
                }
            }
            if !nlri.is_empty() && !d.seen[usize::from(attr::NEXT_HOP)] {
                d.withdraw(attr::NEXT_HOP, AttrErrorKind::Missing);
            }
            if ctx.ebgp && d.taw.is_none() && d.attrs.as_path.first_as() != Some(ctx.peer_as) {
                // RFC 7606 §7.2: leftmost AS of an eBGP path must be the peer's.
                d.withdraw(attr::AS_PATH, AttrErrorKind::MalformedAsPath);
            }
        }
        if let Some(p) = d.as4_path.take() {
            d.attrs.as_path = std::mem::take(&mut d.attrs.as_path).merge_as4(p);
        }
        Ok(Update {
            withdrawn,
            attrs: d
                .seen
                .iter()
                .enumerate()
                .any(|(t, s)| {
                    *s && t != usize::from(attr::MP_REACH) && t != usize::from(attr::MP_UNREACH)
                })
                .then_some(d.attrs),
            nlri,
            mp_reach: d.mp_reach,
            mp_unreach: d.mp_unreach,
            treat_as_withdraw: d.taw,
            discarded: d.discarded,
        })
    }

    /// Append the encoded message (header included).
    pub fn encode(&self, out: &mut Vec<u8>, ctx: &Ctx) {
        let s = start_header(out, crate::msg::kind::UPDATE);
        let mut w = Vec::new();
        for p in &self.withdrawn {
            p.encode_nlri(&mut w);
        }
        out.extend_from_slice(&(w.len() as u16).to_be_bytes());
        out.extend_from_slice(&w);
        let mut a = Vec::new();
        if let Some(attrs) = &self.attrs {
            attrs.encode(&mut a, ctx);
        }
        if let Some(m) = &self.mp_reach {
            encode_mp_reach(&mut a, m.afi, m.next_hop, m.link_local, &m.nlri);
        }
        if let Some(m) = &self.mp_unreach {
            encode_mp_unreach(&mut a, m.afi, &m.withdrawn);
        }
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(&a);
        for p in &self.nlri {
            p.encode_nlri(out);
        }
        finish_header(out, s);
    }

    /// True for an End-of-RIB marker (RFC 4724 §2): an empty UPDATE for IPv4, an
    /// UPDATE with only an empty MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(&self) -> Option<Afi> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        match (&self.attrs, &self.mp_unreach) {
            (None, None) => Some(Afi::Ipv4),
            (None, Some(u)) if u.withdrawn.is_empty() => Some(u.afi),
            _ => None,
        }
    }

    /// The End-of-RIB marker for a family.
    pub fn eor(afi: Afi) -> Update {
        match afi {
            Afi::Ipv4 => Update::default(),
            Afi::Ipv6 => Update {
                mp_unreach: Some(MpUnreach {
                    afi,
                    withdrawn: Vec::new(),
                }),
                ..Update::default()
            },
        }
    }

    /// Prefixes this UPDATE withdraws (IPv4 field and MP_UNREACH; with RFC 7606
    /// treat-as-withdraw, the announced ones too).
    pub fn withdrawals(&self) -> Vec<IpNet> {
        let mut v = self.withdrawn.clone();
        if let Some(m) = &self.mp_unreach {
            v.extend_from_slice(&m.withdrawn);
        }
        if self.treat_as_withdraw.is_some() {
            v.extend_from_slice(&self.nlri);
            if let Some(m) = &self.mp_reach {
                v.extend_from_slice(&m.nlri);
            }
        }
        v
    }

    /// Prefixes announced with their next hop (empty under treat-as-withdraw).
    pub fn announcements(&self) -> Vec<(IpNet, IpAddr)> {
        let mut v = Vec::new();
        if self.treat_as_withdraw.is_some() {
            return v;
        }
        if let Some(nh) = self.attrs.as_ref().and_then(|a| a.next_hop) {
            v.extend(self.nlri.iter().map(|p| (*p, IpAddr::V4(nh))));
        }
        if let Some(m) = &self.mp_reach {
            v.extend(m.nlri.iter().map(|p| (*p, m.next_hop)));
        }
        v
    }
}

fn encode_mp_reach(out: &mut Vec<u8>, afi: Afi, nh: IpAddr, ll: Option<Ipv6Addr>, nlri: &[IpNet]) {
    let mut v = Vec::new();
    v.extend_from_slice(&afi.code().to_be_bytes());
    v.push(SAFI_UNICAST);
    match (nh, ll) {
        (IpAddr::V4(a), _) => {
            v.push(4);
            v.extend_from_slice(&a.octets());
        }
        (IpAddr::V6(a), None) => {
            v.push(16);
            v.extend_from_slice(&a.octets());
        }
        (IpAddr::V6(a), Some(l)) => {
            v.push(32);
            v.extend_from_slice(&a.octets());
            v.extend_from_slice(&l.octets());
        }
    }
    v.push(0);
    for p in nlri {
        p.encode_nlri(&mut v);
    }
    put_attr(out, flag::OPTIONAL, attr::MP_REACH, &v);
}

fn encode_mp_unreach(out: &mut Vec<u8>, afi: Afi, withdrawn: &[IpNet]) {
    let mut v = Vec::new();
    v.extend_from_slice(&afi.code().to_be_bytes());
    v.push(SAFI_UNICAST);
    for p in withdrawn {
        p.encode_nlri(&mut v);
    }
    put_attr(out, flag::OPTIONAL, attr::MP_UNREACH, &v);
}

/// Pack announcements sharing one set of attributes into as few UPDATEs as fit in
/// 4096 octets. IPv4 prefixes go in the NLRI field (NEXT_HOP = `next_hop`), IPv6 in
/// MP_REACH_NLRI. Each returned vector is one whole message.
pub fn pack_announce(
    attrs: &PathAttributes,
    next_hop: IpAddr,
    prefixes: &[IpNet],
    ctx: &Ctx,
) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut base = Vec::new();
    let mut a = attrs.clone();
    a.next_hop = match next_hop {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    a.encode(&mut base, ctx);
    // Worst case room: header + 2 + 2 + attrs (+ MP_REACH overhead 4 + 5 + 32).
    let mut rest = prefixes;
    while !rest.is_empty() {
        let fixed = HEADER_LEN + 4 + base.len() + if next_hop.is_ipv6() { 4 + 5 + 16 } else { 0 };
        let mut room = MAX_LEN.saturating_sub(fixed);
        let mut n = 0;
        for p in rest {
            if p.nlri_len() > room {
                break;
            }
            room -= p.nlri_len();
            n += 1;
        }
        let n = n.max(1);
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        let mut out = Vec::with_capacity(MAX_LEN);
        let s = start_header(&mut out, crate::msg::kind::UPDATE);
        out.extend_from_slice(&[0, 0]);
        let mut attrs_bytes = base.clone();
        if next_hop.is_ipv6() {
            encode_mp_reach(&mut attrs_bytes, Afi::Ipv6, next_hop, None, chunk);
        }
        out.extend_from_slice(&(attrs_bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&attrs_bytes);
        if next_hop.is_ipv4() {
            for p in chunk {
                p.encode_nlri(&mut out);
            }
        }
        finish_header(&mut out, s);
        msgs.push(out);
    }
    msgs
}

/// Pack withdrawals of one family into as few UPDATEs as fit.
pub fn pack_withdraw(afi: Afi, prefixes: &[IpNet]) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut rest = prefixes;
    while !rest.is_empty() {
        let fixed = HEADER_LEN + 4 + if afi == Afi::Ipv6 { 4 + 3 } else { 0 };
        let mut room = MAX_LEN - fixed;
        let mut n = 0;
        for p in rest {
            if p.nlri_len() > room {
                break;
            }
            room -= p.nlri_len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n.max(1).min(rest.len()));
        rest = tail;
        let u = match afi {
            Afi::Ipv4 => Update {
                withdrawn: chunk.to_vec(),
                ..Update::default()
            },
            Afi::Ipv6 => Update {
                attrs: None,
                mp_unreach: Some(MpUnreach {
                    afi,
                    withdrawn: chunk.to_vec(),
                }),
                ..Update::default()
            },
        };
        let mut out = Vec::with_capacity(MAX_LEN);
        u.encode(&mut out, &Ctx::default());
        msgs.push(out);
    }
    msgs
}
