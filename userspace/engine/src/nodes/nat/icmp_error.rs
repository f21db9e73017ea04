//! ICMP error translation: an ICMP error (destination unreachable, fragmentation needed,
//! time exceeded, ...) quoting a packet of a translated flow travels like a packet with
//! the quoted tuple reversed. Its session gives the translation: the quoted header (its
//! addresses, ports and checksums) and the outer header are rewritten, so the sender of
//! the quoted packet recognises its own packet.

use ferroplane_tables::service::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ferroplane_tables::{Conntrack, Dir, FlowKey, NatKind};
use ferroplane_wire::{checksum, Ipv4Packet};

use super::super::{be16, ip_at};
use super::translate::{put16, put_ip, rewrite};

/// Translate an ICMP error (outer header at `l3`, ICMP at `hl`) about a translated flow.
/// Returns true when it was translated.
pub(super) fn translate_icmp_error(ct: &mut Conntrack, l3: &mut [u8], hl: usize, now: u64) -> bool {
    let total = (be16(l3, 2) as usize).min(l3.len());
    let inner_at = hl + 8;
    if total < inner_at + 20 {
        return false;
    }
    let ihl = ((l3[inner_at] & 0x0f) as usize) * 4;
    let l4 = inner_at + ihl;
    if ihl < 20 || total < l4 + 8 {
        return false;
    }
    let proto = l3[inner_at + 9];
    let mut inner = FlowKey {
        src: ip_at(l3, inner_at + 12),
        dst: ip_at(l3, inner_at + 16),
        sport: 0,
        dport: 0,
        proto,
    };
    let mut inner_icmp = 0u8;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            inner.sport = be16(l3, l4);
            inner.dport = be16(l3, l4 + 2);
        }
        PROTO_ICMP => {
            inner_icmp = l3[l4];
            let id = be16(l3, l4 + 4);
            match inner_icmp {
                8 => inner.sport = id,
                0 => inner.dport = id,
                _ => return false,
            }
        }
        _ => return false,
    }
    // The error travels like a packet with the reversed inner tuple.
    let Some((id, dir)) = ct.lookup(&inner.reversed(), now) else {
        return false;
    };
    let Some(s) = ct.get(id).copied() else {
        return false;
    };
    if s.nat == NatKind::Untranslated {
        return false;
    }
    let (x, x2) = match dir {
        Dir::Orig => (s.orig, s.reply.reversed()),
        Dir::Reply => (s.reply, s.orig.reversed()),
    };
    let new_inner = x2.reversed();
    // Inner header (the quoted packet): addresses, ports, its own checksums.
    {
        let q = &mut l3[inner_at..total];
        rewrite(q, ihl, &inner, &new_inner, inner_icmp);
    }
    // Outer header: destination always; source when the error came from the peer itself.
    let outer_src = ip_at(l3, 12);
    let new_src = if outer_src == x.src {
        x2.src
    } else {
        outer_src
    };
    put_ip(l3, 12, new_src);
    put_ip(l3, 16, x2.dst);
    put16(l3, hl + 2, 0);
    let c = checksum::checksum(&l3[hl..total]);
    put16(l3, hl + 2, c);
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut l3[..total]) {
        p.fill_checksum();
    }
    true
}
