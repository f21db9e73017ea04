//! Memory per learnt route on the agent's side of BGP: what a table of 100,000 IPv4
//! prefixes costs once it is in the node's state ([`NodeState::bgp_routes`]), the
//! reconciler's layers and FIB builder, and the published FIB, the way the agent feeds them
//! ([`crate::bgp::apply_changes`], [`Changes::routes`]). A counting allocator measures
//! the heap held per route by each stage; only this thread's allocations are counted (the
//! other unit tests run beside it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferroplane_tables::Ipv4Prefix;

use crate::config::NodeSpec;
use crate::reconcile::{Changes, Reconciler};
use crate::state::{NodeState, UplinkState};

thread_local! {
    /// Heap bytes allocated minus freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn count(d: isize) {
    // During thread teardown the slot may be gone: not counted then.
    let _ = LIVE.try_with(|c| c.set(c.get() + d));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes in a
// const-initialised thread-local (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

const ROUTES: u32 = 100_000;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

fn state() -> NodeState {
    let yaml = "node:\n  name: node-1\n  uplink: up0\n  address: 192.168.100.2/24\n  gateway: 192.168.100.1\n  podCIDR: 10.244.1.0/24\n";
    NodeState {
        spec: NodeSpec::from_yaml(yaml).unwrap(),
        uplink: UplinkState {
            name: "up0".into(),
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            port: Some(0),
            queues: 1,
            xdp_mode: None,
        },
        pods: BTreeMap::new(),
        neighbours: BTreeMap::from([(GATEWAY, [2, 9, 9, 9, 9, 1])]),
        overlay: Default::default(),
        bgp_routes: Default::default(),
        services: Default::default(),
        k8s_pods: Vec::new(),
        k8s_host_ports: Vec::new(),
    }
}

fn learnt(i: u32) -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::from((100u32 << 24) + (i << 8)), 24).unwrap()
}

/// Heap per learnt route the agent may hold besides the speaker: the node state's copy
/// (prefix and shared next-hop set) and the reconciler's (one shared route entry in its
/// layer, the FIB builder and the FIB; the FIB's index, load balance and bucket).
/// Measured 241 B (node state 48, reconciler + FIB 193; requested sizes, the allocator's
/// overhead not counted); 385 B (67 + 318) when each structure held its own copy of the
/// route entry and each route its own next-hop `Vec`.
const BUDGET_PER_ROUTE: isize = 280;

#[test]
fn a_full_table_costs_little_in_the_agent() {
    let mut s = state();
    let mut rec = Reconciler::new();
    drop(rec.snapshot(&s, &Changes::all()).unwrap());
    let per = |b: isize| b / ROUTES as isize;

    let prefixes: Vec<Ipv4Prefix> = (0..ROUTES).map(learnt).collect();
    let prefixes_bytes = (prefixes.capacity() * std::mem::size_of::<Ipv4Prefix>()) as isize;
    let t0 = live();
    // As the agent does: the speaker's changes into the node state (the list consumed)...
    let mut sets = ferroplane_bgp::intern::Interner::<[Ipv4Addr]>::new();
    let changes: Vec<(Ipv4Prefix, crate::bgp::NextHops)> = prefixes
        .iter()
        .map(|p| (*p, sets.intern_ref(&[GATEWAY][..])))
        .collect();
    crate::bgp::apply_changes(&mut s.bgp_routes, changes);
    let t_state = live();
    // ... then the changed prefixes into the reconciler (the list consumed too).
    let snap = rec.snapshot(&s, &Changes::routes(prefixes)).unwrap();
    let t_snap = live() + prefixes_bytes;
    assert!(snap.fib.len() >= ROUTES as usize, "{}", snap.fib.len());
    let (state_b, rec_b) = (per(t_state - t0), per(t_snap - t_state));
    println!(
        "heap per learnt route: node state {state_b} B, reconciler + FIB {rec_b} B, total {} B",
        state_b + rec_b
    );
    assert!(
        state_b + rec_b <= BUDGET_PER_ROUTE,
        "{} bytes per route (budget {BUDGET_PER_ROUTE})",
        state_b + rec_b
    );
    // A version built from it shares the routes: it costs its own index and arrays only.
    let t_again = live();
    let again = rec.snapshot(&s, &Changes::default()).unwrap();
    let again_b = per(live() - t_again);
    println!("a second FIB version: {again_b} B per route");
    assert!(again_b <= 64, "{again_b}");
    drop((snap, again));
}
