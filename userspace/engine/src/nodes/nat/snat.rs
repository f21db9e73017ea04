//! Masquerade and SNAT port allocation: a pod's new flow leaving the cluster gets the
//! node's (or the configured) address and a port of the SNAT range; a connection from
//! outside the cluster to a local pod is tracked untranslated, so that the pod's answers
//! are its reply direction and are not masqueraded. [`alloc_port`] also serves the SNAT
//! of service flows ([`super::service`]).

use std::net::Ipv4Addr;

use ferroplane_tables::{Conntrack, CtError, FlowKey, NatKind};

use super::{Decision, Env, NatError, Parsed};

/// Pick a port on `snat` for replies from `remote` so that the reply tuple is unused.
pub(super) fn alloc_port(
    ct: &Conntrack,
    now: u64,
    proto: u8,
    remote: (Ipv4Addr, u16),
    snat: Ipv4Addr,
    preferred: u16,
    range: (u16, u16),
) -> Option<u16> {
    // Several workers: this table's slice of the range, so no other worker's table can
    // hand out the same translated tuple.
    let (lo, hi) = ct.share_of_range(range);
    let size = (hi - lo) as u32 + 1;
    let start = if (lo..=hi).contains(&preferred) {
        (preferred - lo) as u32
    } else {
        let h = ferroplane_tables::maglev::mix64(
            ((u32::from(remote.0) as u64) << 32) ^ ((remote.1 as u64) << 16) ^ preferred as u64,
        );
        (h % size as u64) as u32
    };
    for i in 0..size.min(512) {
        let p = lo + ((start + i) % size) as u16;
        let key = FlowKey {
            src: remote.0,
            dst: snat,
            sport: remote.1,
            dport: p,
            proto,
        };
        if !ct.contains(&key, now) {
            return Some(p);
        }
    }
    None
}

/// A pod's new flow leaving the cluster (masquerade on): SNAT to the masquerade address
/// (or the node's) and a free port of the SNAT range.
pub(super) fn masquerade(
    ct: &mut Conntrack,
    env: &Env<'_>,
    p: &Parsed,
    counts: &mut [u64; NatError::INFO.len()],
) -> Decision {
    let key = p.key;
    let nat = env.nat;
    let Some(a) = nat.masquerade_addr.or(env.node_ip) else {
        return Decision::Drop(NatError::NoSnatAddress);
    };
    let Some(port) = alloc_port(
        ct,
        env.now,
        key.proto,
        (key.dst, key.dport),
        a,
        key.sport,
        nat.snat_ports,
    ) else {
        return Decision::Drop(NatError::NoPort);
    };
    let reply = FlowKey {
        src: key.dst,
        dst: a,
        sport: key.dport,
        dport: port,
        proto: key.proto,
    };
    match ct.create(key, reply, NatKind::Snat, None, p.tcp_flags, env.now) {
        Ok(id) => {
            counts[NatError::NewMasquerade as usize] += 1;
            Decision::Session(id)
        }
        Err(CtError::Full) => Decision::Drop(NatError::Full),
        Err(CtError::Exists) => Decision::Drop(NatError::NoPort),
    }
}

/// A connection from outside the cluster to a pod of this node (masquerade on): tracked
/// untranslated from its first packet (see the comment in [`super::Ip4Nat`]'s `new_flow`).
pub(super) fn track(
    ct: &mut Conntrack,
    env: &Env<'_>,
    p: &Parsed,
    counts: &mut [u64; NatError::INFO.len()],
) -> Decision {
    let key = p.key;
    let r = ct.create(
        key,
        key.reversed(),
        NatKind::Untranslated,
        None,
        p.tcp_flags,
        env.now,
    );
    match r {
        Ok(id) => {
            counts[NatError::Tracked as usize] += 1;
            Decision::Session(id)
        }
        Err(CtError::Full) => Decision::Drop(NatError::Full),
        // The pod uses this tuple toward the client already (a simultaneous open):
        // that session carries the connection.
        Err(CtError::Exists) => Decision::Pass,
    }
}
