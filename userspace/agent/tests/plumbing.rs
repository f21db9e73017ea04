//! Pod plumbing against the real kernel, in network namespaces these tests create.
//!
//! Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN for setns) and iproute2; skips with a message
//! otherwise. Every namespace name contains the PID and is deleted on drop, even on panic.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use ferroplane_agent::config::PodSpec;
use ferroplane_agent::netlink::{
    host_ifname, NeighbourState, PlumbError, Plumber, PodLink, POD_GATEWAY,
};
use serde_json::Value;

/// The testkit's checks: skipped (a failure when `CI=true`) without root or iproute2.
fn can_run() -> bool {
    ferroplane_testkit::require_root() && ferroplane_testkit::require_tool("ip", "iproute2")
}

/// The testkit's namespace guard (`fp<pid>-<n>-<tag>`, deleted on drop), its name at hand.
struct Netns {
    name: String,
    _guard: ferroplane_testkit::Netns,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let guard = ferroplane_testkit::Netns::new(tag);
        Netns {
            name: guard.name().to_string(),
            _guard: guard,
        }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ip -n NS CMD` (CMD split on whitespace); panics on failure.
fn ip(ns: &str, cmd: &str) {
    let mut args = vec!["ip", "-n", ns];
    args.extend(cmd.split_whitespace());
    run(&args);
}

/// `ip -n NS -j ARGS...` parsed; `None` if the command fails (e.g. no such device).
fn ip_json(ns: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        return Some(Value::Array(vec![]));
    }
    Some(serde_json::from_str(&text).unwrap())
}

fn ip_list(ns: &str, args: &[&str]) -> Vec<Value> {
    match ip_json(ns, args) {
        Some(Value::Array(v)) => v,
        other => panic!("ip -n {ns} -j {args:?}: {other:?}"),
    }
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` to completion on a thread that entered `ns`, with its own runtime; panics in
/// `f` propagate to the caller (so the namespace guards drop).
fn in_ns<F, Fut>(ns: &Netns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let path = ns.path();
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Checks the whole plumbed state of one pod from the outside with iproute2.
fn check_pod(node: &str, pod_ns: &str, pod: &PodSpec, link: &PodLink, mtu: u32) {
    let host = &link.host_ifname;
    assert_eq!(host, &host_ifname(&pod.namespace, &pod.name));
    assert!(host.len() <= 15);

    // Host side: up, MTU, no IPv4 address.
    let l = &ip_list(node, &["addr", "show", "dev", host])[0];
    assert_eq!(l["ifindex"].as_u64(), Some(u64::from(link.host_ifindex)));
    assert_eq!(
        l["address"].as_str(),
        Some(mac_str(&link.host_mac).as_str())
    );
    assert_eq!(l["mtu"].as_u64(), Some(u64::from(mtu)));
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );
    assert!(
        !l["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["family"] == "inet"),
        "host side has an IPv4 address: {l}"
    );
    // Its peer is in another namespace.
    let d = &ip_list(node, &["-d", "link", "show", "dev", host])[0];
    assert_eq!(d["linkinfo"]["info_kind"], "veth", "{d}");
    assert!(d.get("link_netnsid").is_some(), "{d}");

    // Route ip/32 dev host scope link.
    let routes = ip_list(node, &["route", "show", "dev", host]);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["dst"], pod.ip.to_string());
    assert_eq!(routes[0]["scope"], "link");
    // Permanent neighbour ip -> pod MAC.
    let neigh = ip_list(node, &["neigh", "show", "dev", host]);
    let n = neigh
        .iter()
        .find(|n| n["dst"] == pod.ip.to_string())
        .unwrap_or_else(|| panic!("no neighbour for {}: {neigh:?}", pod.ip));
    assert_eq!(n["lladdr"].as_str(), Some(mac_str(&link.pod_mac).as_str()));
    assert_eq!(n["state"], serde_json::json!(["PERMANENT"]));

    // Pod side: renamed, ip/32, MTU, up.
    let p = &ip_list(pod_ns, &["addr", "show", "dev", &pod.interface])[0];
    assert_eq!(p["ifindex"].as_u64(), Some(u64::from(link.pod_ifindex)));
    assert_eq!(p["address"].as_str(), Some(mac_str(&link.pod_mac).as_str()));
    assert_eq!(p["mtu"].as_u64(), Some(u64::from(mtu)));
    assert!(p["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let v4: Vec<(String, u64)> = p["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(v4, vec![(pod.ip.to_string(), 32)]);
    // Peer pointers: pod side's link index is the host side's index.
    let pd = &ip_list(pod_ns, &["-d", "link", "show", "dev", &pod.interface])[0];
    assert_eq!(
        pd["link_index"].as_u64(),
        Some(u64::from(link.host_ifindex)),
        "{pd}"
    );
    // lo up.
    let lo = &ip_list(pod_ns, &["link", "show", "dev", "lo"])[0];
    assert!(lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // Exactly the two routes.
    let mut routes: Vec<(String, String, String, String)> = ip_list(pod_ns, &["route", "show"])
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("dst"), s("gateway"), s("dev"), s("scope"))
        })
        .collect();
    routes.sort();
    let gw = POD_GATEWAY.to_string();
    let iface = pod.interface.clone();
    assert_eq!(
        routes,
        vec![
            (gw.clone(), String::new(), iface.clone(), "link".to_string()),
            ("default".to_string(), gw, iface, String::new()),
        ]
    );
}

#[test]
fn pods_are_plumbed_idempotently_and_deleted() {
    if !can_run() {
        return;
    }
    let node = Netns::new("p-node");
    let ns_a = Netns::new("p-a");
    let ns_b = Netns::new("p-b");
    let pod_a = PodSpec::new("a", ns_a.name.clone(), Ipv4Addr::new(10, 244, 1, 10));
    let mut pod_b = PodSpec::new("b", ns_b.path(), Ipv4Addr::new(10, 244, 1, 11));
    pod_b.namespace = "kube-system".to_string();
    pod_b.interface = "net1".to_string();
    let mtu = 1400;

    // The checks run `ip` from inside the node thread: fine, they name namespaces explicitly.
    let (node_name, a_name, b_name) = (node.name.clone(), ns_a.name.clone(), ns_b.name.clone());
    in_ns(&node, move || async move {
        let (node, ns_a, ns_b) = (node_name.as_str(), a_name.as_str(), b_name.as_str());

        let plumber = Plumber::new().unwrap();
        let a = plumber.create_pod(&pod_a, mtu, POD_GATEWAY).await.unwrap();
        let b = plumber.create_pod(&pod_b, mtu, POD_GATEWAY).await.unwrap();
        assert!(!a.reused && !b.reused);
        assert_ne!(a.host_ifname, b.host_ifname);
        check_pod(node, ns_a, &pod_a, &a, mtu);
        check_pod(node, ns_b, &pod_b, &b, mtu);

        // link_info agrees with iproute2.
        let info = plumber.link_info(&a.host_ifname).await.unwrap();
        assert_eq!(info.ifindex, a.host_ifindex);
        assert_eq!(info.mac, a.host_mac);
        assert_eq!(info.mtu, mtu);
        assert!(info.up);
        assert!(info.ipv4.is_empty());

        // Again: reused, same links.
        let a2 = plumber.create_pod(&pod_a, mtu, POD_GATEWAY).await.unwrap();
        assert!(a2.reused);
        assert_eq!(
            (a2.host_ifindex, a2.pod_ifindex, a2.host_mac, a2.pod_mac),
            (a.host_ifindex, a.pod_ifindex, a.host_mac, a.pod_mac)
        );
        check_pod(node, ns_a, &pod_a, &a2, mtu);

        // Partly lost state (routes, neighbour, pod link down) is repaired on reuse.
        ip(node, "route del 10.244.1.11/32");
        ip(
            node,
            &format!("neigh del 10.244.1.11 dev {}", b.host_ifname),
        );
        ip(ns_b, "route del default");
        ip(ns_b, "link set net1 down");
        let b2 = plumber.create_pod(&pod_b, mtu, POD_GATEWAY).await.unwrap();
        assert!(b2.reused);
        check_pod(node, ns_b, &pod_b, &b2, mtu);

        // The pod side lost its address: recreated.
        ip(ns_a, "addr flush dev eth0");
        let a3 = plumber.create_pod(&pod_a, mtu, POD_GATEWAY).await.unwrap();
        assert!(!a3.reused);
        check_pod(node, ns_a, &pod_a, &a3, mtu);

        // The pod's IP changed: recreated with the new address.
        let mut pod_a_moved = pod_a.clone();
        pod_a_moved.ip = Ipv4Addr::new(10, 244, 1, 20);
        let a4 = plumber
            .create_pod(&pod_a_moved, mtu, POD_GATEWAY)
            .await
            .unwrap();
        assert!(!a4.reused);
        check_pod(node, ns_a, &pod_a_moved, &a4, mtu);
        assert!(
            ip_list(node, &["route", "show", "10.244.1.10/32"]).is_empty(),
            "stale route left behind"
        );

        // A host veth whose peer lives elsewhere (here: in the node namespace) is replaced.
        plumber.delete_pod(&pod_a_moved).await.unwrap();
        ip(
            node,
            &format!("link add {} type veth peer name stray0", a.host_ifname),
        );
        let a5 = plumber
            .create_pod(&pod_a_moved, mtu, POD_GATEWAY)
            .await
            .unwrap();
        assert!(!a5.reused);
        check_pod(node, ns_a, &pod_a_moved, &a5, mtu);
        assert!(ip_json(node, &["link", "show", "dev", "stray0"]).is_none());

        // Delete: veth, route and neighbour gone on both sides; b untouched.
        assert!(plumber.delete_pod(&pod_a_moved).await.unwrap());
        assert!(ip_json(node, &["link", "show", "dev", &a.host_ifname]).is_none());
        assert!(ip_json(ns_a, &["link", "show", "dev", "eth0"]).is_none());
        assert!(ip_list(node, &["route", "show", "10.244.1.20/32"]).is_empty());
        assert!(ip_list(node, &["neigh", "show", "10.244.1.20"]).is_empty());
        assert!(matches!(
            plumber.link_info(&a.host_ifname).await,
            Err(PlumbError::LinkNotFound(_))
        ));
        assert!(!plumber.delete_pod(&pod_a_moved).await.unwrap());
        check_pod(node, ns_b, &pod_b, &b2, mtu);
        assert!(plumber.delete_pod(&pod_b).await.unwrap());
        assert!(ip_json(ns_b, &["link", "show", "dev", "net1"]).is_none());
    });
}

#[test]
fn missing_pod_netns_is_an_error() {
    if !can_run() {
        return;
    }
    let node = Netns::new("e-node");
    let missing = format!("fpt{}-e-missing", std::process::id());
    in_ns(&node, move || async move {
        let plumber = Plumber::new().unwrap();
        let pod = PodSpec::new("x", missing.clone(), Ipv4Addr::new(10, 244, 1, 5));
        let err = plumber
            .create_pod(&pod, 1500, POD_GATEWAY)
            .await
            .unwrap_err();
        assert!(matches!(err, PlumbError::Netns { .. }), "{err}");
        assert!(err.to_string().contains(&missing), "{err}");
        assert!(matches!(
            plumber.link_info("nope0").await,
            Err(PlumbError::LinkNotFound(n)) if n == "nope0"
        ));
        // Nothing was left behind.
        let host = host_ifname("default", "x");
        assert!(matches!(
            plumber.link_info(&host).await,
            Err(PlumbError::LinkNotFound(_))
        ));
        let lo = plumber.link_info("lo").await.unwrap();
        assert_eq!(lo.ifindex, 1);
        assert!(lo.up, "the testkit's namespace guard sets lo up");
    });
}

#[test]
fn managed_neighbour_resolves_without_traffic() {
    if !can_run() {
        return;
    }
    let ns1 = Netns::new("m1");
    let ns2 = Netns::new("m2");
    ip(
        &ns1.name,
        &format!("link add m1 type veth peer name m2 netns {}", ns2.name),
    );
    ip(&ns1.name, "addr add 10.99.0.1/24 dev m1");
    ip(&ns2.name, "addr add 10.99.0.2/24 dev m2");
    ip(&ns1.name, "link set m1 up");
    ip(&ns2.name, "link set m2 up");
    ip(
        &ns1.name,
        "neigh add 10.99.0.3 lladdr 02:00:00:00:00:03 dev m1 nud permanent",
    );
    let m2_mac = ip_list(&ns2.name, &["link", "show", "dev", "m2"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();

    let ns1_name = ns1.name.clone();
    in_ns(&ns1, move || async move {
        let plumber = Plumber::new().unwrap();
        let m1 = plumber.link_info("m1").await.unwrap();
        assert_eq!(m1.ipv4, vec![(Ipv4Addr::new(10, 99, 0, 1), 24)]);
        let peer = Ipv4Addr::new(10, 99, 0, 2);
        assert!(!plumber
            .neighbours(m1.ifindex)
            .await
            .unwrap()
            .iter()
            .any(|n| n.ip == peer));

        plumber
            .ensure_managed_neighbour(peer, m1.ifindex)
            .await
            .unwrap();
        let start = Instant::now();
        let found = loop {
            let neigh = plumber.neighbours(m1.ifindex).await.unwrap();
            if let Some(n) = neigh.into_iter().find(|n| n.ip == peer) {
                break n;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "managed neighbour {peer} not resolved after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "managed neighbour resolved in {:?}: {found:?}",
            start.elapsed()
        );
        assert_eq!(mac_str(&found.mac), m2_mac);
        assert!(found.managed);
        // Idempotent: a managed entry is left as it is (still resolved right after).
        plumber
            .ensure_managed_neighbour(peer, m1.ifindex)
            .await
            .unwrap();
        let again = plumber.neighbours(m1.ifindex).await.unwrap();
        assert!(again.contains(&found), "{again:?}");

        // A plain dynamic entry becomes managed and keeps its MAC meanwhile.
        plumber.delete_neighbour(peer, m1.ifindex).await.unwrap();
        ip(
            &ns1_name,
            &format!("neigh replace 10.99.0.2 lladdr {m2_mac} dev m1 nud reachable"),
        );
        plumber
            .ensure_managed_neighbour(peer, m1.ifindex)
            .await
            .unwrap();
        let n = plumber
            .neighbours(m1.ifindex)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.ip == peer)
            .unwrap();
        assert_eq!(mac_str(&n.mac), m2_mac);
        assert!(n.managed, "{n:?}");
        assert!(matches!(
            found.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
        ));

        // An admin's permanent entry is left alone.
        let pinned = Ipv4Addr::new(10, 99, 0, 3);
        plumber
            .ensure_managed_neighbour(pinned, m1.ifindex)
            .await
            .unwrap();
        let n = plumber
            .neighbours(m1.ifindex)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.ip == pinned)
            .unwrap();
        assert_eq!(
            (n.mac, n.state, n.managed),
            ([2, 0, 0, 0, 0, 3], NeighbourState::Permanent, false)
        );

        // Deleting it works, twice.
        plumber.delete_neighbour(peer, m1.ifindex).await.unwrap();
        plumber.delete_neighbour(peer, m1.ifindex).await.unwrap();
        assert!(!plumber
            .neighbours(m1.ifindex)
            .await
            .unwrap()
            .iter()
            .any(|n| n.ip == peer));
    });
}
