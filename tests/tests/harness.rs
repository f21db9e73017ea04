//! Self-tests of the e2e harness: namespaces, processes, veth, probes, kernel forwarding.
//! Root only (each test skips with a message otherwise).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use ferroplane_e2e::bench::{self, BenchTools, RunConfig};
use ferroplane_e2e::{link_veth, ping, require_root, scapy, tcp_transfer, Netns, Topology};

fn exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn netns_created_and_deleted_on_drop() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("life").unwrap();
    let name = ns.name().to_string();
    assert!(
        name.starts_with(&format!("fp{}-", std::process::id())),
        "{name}"
    );
    assert!(name.ends_with("-life"), "{name}");
    assert!(exists(&name));
    let out = ns.exec_ok(&["ip", "-o", "link", "show"]).unwrap();
    assert!(out.contains("lo:"), "{out}");
    assert_eq!(out.lines().count(), 1, "a new namespace has only lo: {out}");
    drop(ns);
    assert!(!exists(&name), "{name} still exists after drop");
}

#[test]
fn netns_deleted_after_panic_in_scope() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("panic").unwrap();
        let child = ns.spawn(&["sleep", "60"]).unwrap();
        tx.send((ns.name().to_string(), child.pid())).unwrap();
        std::mem::forget(child); // only the namespace's drop can stop it now
        panic!("deliberate panic inside the scope");
    });
    assert!(result.is_err());
    let (name, pid) = rx.recv().unwrap();
    assert!(!exists(&name), "{name} survived the panic");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "process {pid} started in {name} still runs"
    );
}

#[test]
fn names_are_unique() {
    if !require_root() {
        return;
    }
    let a = Netns::new("same").unwrap();
    let b = Netns::new("same").unwrap();
    assert_ne!(a.name(), b.name());
}

#[test]
fn spawned_process_stopped_by_guard_and_by_namespace() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("proc").unwrap();
    let guard = ns.spawn(&["sleep", "60"]).unwrap();
    assert!(guard.is_running());
    assert!(ns.pids().unwrap().contains(&(guard.pid() as i32)));
    let status = guard.stop().expect("an exit status");
    assert!(!status.success(), "sleep was killed by a signal: {status}");
    assert!(!guard.is_running());
    drop(guard);
    // A process that ignores SIGTERM still goes away with the namespace (SIGKILL).
    let stubborn = ns
        .spawn(&["sh", "-c", "trap '' TERM; sleep 60 & wait"])
        .unwrap();
    let pid = stubborn.pid();
    let name = ns.name().to_string();
    drop(ns);
    assert!(!exists(&name));
    assert!(!stubborn.is_running(), "pid {pid} still running");
}

#[test]
fn run_closure_inside_namespace() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("run").unwrap();
    ns.add_addr("lo", "10.123.0.1/32").unwrap();
    let (devs, port) = ns
        .run(|| {
            // The thread's own view of its namespace: only lo.
            let devs = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            // An address configured only inside the namespace is usable with std::net.
            let l = TcpListener::bind((Ipv4Addr::new(10, 123, 0, 1), 0)).unwrap();
            let port = l.local_addr().unwrap().port();
            TcpStream::connect((Ipv4Addr::new(10, 123, 0, 1), port)).unwrap();
            (devs, port)
        })
        .unwrap();
    let ifaces: Vec<&str> = devs
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{devs}");
    assert!(port > 0);
    // Outside, that address does not exist.
    assert!(TcpListener::bind((Ipv4Addr::new(10, 123, 0, 1), 0)).is_err());
    // A panic in the closure reaches the caller.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inner")).unwrap();
    }));
    assert!(r.is_err());
}

#[test]
fn veth_link_and_ping() {
    if !require_root() {
        return;
    }
    let a = Netns::new("pa").unwrap();
    let b = Netns::new("pb").unwrap();
    link_veth(&a, "veth0", &b, "veth1").unwrap();
    a.add_addr("veth0", "10.99.0.1/24").unwrap();
    b.add_addr("veth1", "10.99.0.2/24").unwrap();
    let stats = ping(&a, Ipv4Addr::new(10, 99, 0, 2), 2).unwrap();
    assert_eq!((stats.transmitted, stats.received), (2, 2));
    let rx = b.link_stats("veth1").unwrap();
    assert!(rx.rx_packets >= 2, "{rx:?}");
    assert_eq!(a.mac("veth0").unwrap().len(), 17);
    // A host that is not there fails, quickly.
    let err = ping(&a, Ipv4Addr::new(10, 99, 0, 77), 1).unwrap_err();
    assert!(err.to_string().contains("0/1"), "{err}");
}

#[test]
fn tcp_transfer_through_kernel_forwarding() {
    if !require_root() {
        return;
    }
    let left = Netns::new("left").unwrap();
    let mid = Netns::new("mid").unwrap();
    let right = Netns::new("right").unwrap();
    link_veth(&left, "l0", &mid, "ml").unwrap();
    link_veth(&mid, "mr", &right, "r0").unwrap();
    left.add_addr("l0", "10.98.1.2/24").unwrap();
    mid.add_addr("ml", "10.98.1.1/24").unwrap();
    mid.add_addr("mr", "10.98.2.1/24").unwrap();
    right.add_addr("r0", "10.98.2.2/24").unwrap();
    left.add_route("default", "10.98.1.1").unwrap();
    right.add_route("default", "10.98.2.1").unwrap();

    // Forwarding off: nothing gets through.
    mid.set_sysctl("net.ipv4.ip_forward", "0").unwrap();
    let target = Ipv4Addr::new(10, 98, 2, 2);
    assert!(tcp_transfer(&left, &right, target, 5201, 1000).is_err());

    mid.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(mid.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    ping(&left, target, 1).unwrap();
    let bytes = 3 * 1024 * 1024 + 17; // not a multiple of any buffer size
    let stats = tcp_transfer(&left, &right, target, 5202, bytes).unwrap();
    assert_eq!(stats.bytes, bytes);
    assert!(stats.mbit_per_s() > 0.0);
    let fwd = mid.link_stats("mr").unwrap();
    assert!(fwd.tx_bytes >= bytes, "forwarded through mid: {fwd:?}");
}

#[test]
fn scapy_runs_in_namespace() {
    if !require_root() {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        ferroplane_e2e::skip("/usr/bin/python3 missing (cargo xtask deps installs python3-scapy)");
        return;
    }
    let ns = Netns::new("scapy").unwrap();
    let out = scapy(
        &ns,
        "from scapy.all import IP, UDP, get_if_list\n\
         print(sorted(get_if_list()))\n\
         print(len(IP(dst='10.0.0.1')/UDP(dport=9)))\n",
    )
    .unwrap();
    assert!(out.contains("['lo']"), "{out}");
    assert!(out.contains("28"), "{out}");
    assert!(scapy(&ns, "raise SystemExit(3)").is_err());
}

#[test]
fn single_node_topology_without_agent() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(3).unwrap();
    assert_eq!(topo.pods.len(), 3);
    assert_eq!(topo.pods[2].ip, Ipv4Addr::new(10, 244, 1, 12));
    ping(&topo.router, Topology::NODE_IP, 1).unwrap();
    let yaml = std::fs::read_to_string(topo.spec_path()).unwrap();
    assert!(yaml.contains("uplink: up0"), "{yaml}");
    assert!(yaml.contains("address: 192.168.100.2/24"), "{yaml}");
    assert!(yaml.contains("podCIDR: 10.244.1.0/24"), "{yaml}");
    assert!(
        yaml.contains(&format!("netns: {}", topo.pods[1].ns.name())),
        "{yaml}"
    );
    assert!(yaml.contains("ip: 10.244.1.11"), "{yaml}");
    // A missing agent binary is a clear error, not a hang.
    let err = topo
        .start_agent(Path::new("/nonexistent-bin-dir"))
        .unwrap_err();
    assert!(err.to_string().contains("ferroplane-agent"), "{err}");
    let names: Vec<String> = [&topo.router, &topo.node]
        .into_iter()
        .chain(topo.pods.iter().map(|p| &p.ns))
        .map(|n| n.name().to_string())
        .collect();
    let dir = topo.dir().to_path_buf();
    drop(topo);
    for name in names {
        assert!(!exists(&name), "{name} left behind");
    }
    assert!(!dir.exists());
}

#[test]
fn kernel_forward_bench_measures_a_rate() {
    if !require_root() {
        return;
    }
    let tools_dir = ferroplane_e2e::TempDir::new("benchtools").unwrap();
    let tools = BenchTools::build(&BenchTools::source_dir(), tools_dir.path()).unwrap();
    let topo = Topology::single_node(1).unwrap();
    let cfg = RunConfig {
        runs: 1,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
    };
    let rates = bench::kernel_forward(&topo, &tools, &cfg).unwrap();
    assert_eq!(rates.len(), 1);
    // The generator alone makes ~1 Mpps here; anything forwarded at all is > 10 kpps.
    assert!(
        rates[0] > 10_000.0,
        "kernel forwarding measured {rates:?} pps"
    );
    // The plumbing is gone again; the node keeps forwarding on, as every emulated node.
    assert!(topo.node.ip(&["link", "show", "fpkbench0"]).is_err());
    assert_eq!(topo.node.sysctl("net.ipv4.ip_forward").unwrap(), "1");
}
