// SCRATCH (helper bgp): memory probe, removed before hand-off.
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;

struct Count;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static N: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Count {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        N.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
}
#[global_allocator]
static A: Count = Count;

fn mib() -> f64 { LIVE.load(Ordering::Relaxed) as f64 / 1048576.0 }

fn main() {
    use ferroplane_bgp::rib::*;
    use ferroplane_bgp::update::PathAttributes;
    use ferroplane_bgp::Prefix;
    let n = 100_000u32;
    let nh = IpAddr::V4(Ipv4Addr::new(192, 168, 100, 1));
    let prefixes: Vec<Prefix> = (0..n).map(|i| Prefix::v4(Ipv4Addr::from((100u32 << 24) + (i << 8)), 24).unwrap()).collect();
    let base = mib();
    let attrs = Arc::new(PathAttributes::default());
    let mut adj: AdjRibIn = HashMap::new();
    for p in &prefixes {
        adj.insert(*p, InRoute { attrs: attrs.clone(), next_hop: nh, accepted: true, stale: false });
    }
    let a1 = mib();
    println!("adj-rib-in: {:.1} MiB ({} B/prefix) sizeof InRoute {} Prefix {}", a1 - base, ((a1-base)*1048576.0/n as f64) as u64, std::mem::size_of::<InRoute>(), std::mem::size_of::<Prefix>());
    let mut rib = LocRib::new(64512, true);
    for p in &prefixes {
        rib.insert(*p, Path { source: Source::Peer(0), attrs: attrs.clone(), next_hop: nh, ebgp: true, router_id: Ipv4Addr::new(1,1,1,1), peer_addr: nh, igp_cost: None, stale: false });
    }
    let a2 = mib();
    println!("loc-rib: {:.1} MiB ({} B/prefix) sizeof Path {} Dest {}", a2 - a1, ((a2-a1)*1048576.0/n as f64) as u64, std::mem::size_of::<Path>(), std::mem::size_of::<Dest>());
    let mut routes: BTreeMap<ferroplane_tables::Ipv4Prefix, Vec<Ipv4Addr>> = BTreeMap::new();
    for i in 0..n {
        routes.insert(ferroplane_tables::Ipv4Prefix::new(Ipv4Addr::from((100u32 << 24) + (i << 8)), 24).unwrap(), vec![Ipv4Addr::new(192,168,100,1)]);
    }
    let a3 = mib();
    println!("agent bgp_routes: {:.1} MiB", a3 - a2);
    use ferroplane_tables::*;
    let mut b = FibBuilder::new();
    b.interface(0, [2,0,0,0,0,1], 1500);
    for (p, h) in &routes {
        b.route(RouteEntry { prefix: *p, source: RouteSource::Bgp, action: RouteAction::Forward(h.iter().map(|h| ferroplane_tables::Path { via: Some(*h), sw_if: 0 }).collect()) });
    }
    let a4 = mib();
    println!("FibBuilder: {:.1} MiB", a4 - a3);
    let fib = b.build().unwrap();
    let a5 = mib();
    println!("Fib: {:.1} MiB", a5 - a4);
    drop(b);
    println!("after builder drop, total {:.1} MiB (fib {} routes)", mib() - base, fib.routes().count());
}
