//! BGP interop (issue 6): the agent's speaker against BIRD 2 and GoBGP running in the
//! "router" namespace of the single-node topology, and against a tiny hand-written peer
//! that sends malformed UPDATEs (RFC 7606).
//!
//! Layout: router ns `rtr0` 192.168.100.1 (BIRD, AS 65001) and 192.168.100.3 (GoBGP,
//! AS 65002, in the first test; a second BIRD, AS 65003, in the transit test); node ns
//! `up0` 192.168.100.2 (agent, AS 64512; FRR's zebra next to it in the zebra test).
//! Ports: BGP 179 inside the namespaces; GoBGP's API on 50000 + pid % 1000 (router ns).
//!
//! The full-mesh tests use the cluster harness instead: 3 ferroplane nodes on a fabric
//! bridge whose specs list each other without `podCIDR`, so remote pod CIDRs come from
//! iBGP only (TCP ports 47300-47399 for transfers).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferroplane_bgp::msg::{Capability, Ctx, Message, Open};
use ferroplane_bgp::prefix::Afi;
use ferroplane_e2e::cluster::{Cluster, ClusterBgp, OverlayMode};
use ferroplane_e2e::netns::Netns;
use ferroplane_e2e::probe::{epoch_now, ping, tcp_transfer, ContinuousPing};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, require_root, ChildGuard, TempDir};
use serde_json::Value;

const AGENT_AS: u32 = 64512;
const BIRD_AS: u32 = 65001;
const GOBGP_AS: u32 = 65002;
const ROUTER: &str = "192.168.100.1";
const ROUTER2: &str = "192.168.100.3";
const NODE: &str = "192.168.100.2";
/// The protocol number of the agent's kernel routes (no routing daemon claims it).
const PROTO: &str = "157";

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out ({secs} s) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ping until one round of `count` fully succeeds (the first packets toward a fresh
/// next hop wait for neighbour resolution), at most 10 s.
fn ping_ok(ns: &Netns, ip: &str, count: u32, what: &str) {
    let ip: Ipv4Addr = ip.parse().expect("address");
    let t = Instant::now();
    loop {
        match ping(ns, ip, count) {
            Ok(_) => return,
            Err(e) if t.elapsed() > Duration::from_secs(10) => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn bgp_yaml(peers: &[(&str, u32)], gr: bool) -> String {
    let mut y = format!(
        "bgp:\n  localAS: {AGENT_AS}\n  holdTime: 9\n  connectRetry: 1\n  gracefulRestart:\n    enabled: {gr}\n    restartTime: 30\n  peers:\n"
    );
    for (a, asn) in peers {
        y.push_str(&format!("    - address: {a}\n      as: {asn}\n"));
    }
    y
}

/// Single-node topology, the router's static route to the pod CIDR removed (BGP
/// provides it), the node's default route and gateway removed (so forwarding to the
/// router's networks depends on BGP), agent started with `bgp`.
fn setup(bgp: &str, pods: usize) -> Topology {
    let topo = Topology::single_node(pods).expect("topology");
    topo.router
        .ip(&["route", "del", Topology::POD_CIDR])
        .expect("route del");
    topo.node
        .ip(&["route", "del", "default"])
        .expect("route del default");
    topo.router
        .exec_ok(&["ip", "link", "set", "lo", "up"])
        .expect("lo");
    for a in ["10.99.0.1/32", "10.98.0.1/32"] {
        topo.router.add_addr("lo", a).expect("lo address");
    }
    topo.router
        .set_sysctl("net.ipv4.ip_forward", "1")
        .expect("forwarding");
    let yaml = topo.spec_yaml().replace("  gateway: 192.168.100.1\n", "") + bgp;
    topo.write_spec(&yaml).expect("spec");
    topo
}

fn start_agent(topo: &Topology) -> AgentGuard {
    topo.start_agent(&bin_dir()).expect("agent start")
}

struct Bird {
    _child: ChildGuard,
    ctl: PathBuf,
}

impl Bird {
    fn start(ns: &Netns, dir: &Path, name: &str, conf: &str, recover: bool) -> Bird {
        let cfg = dir.join(format!("{name}.conf"));
        let ctl = dir.join(format!("{name}.ctl"));
        std::fs::write(&cfg, conf).expect("bird conf");
        let log = dir.join(format!("{name}.log"));
        let (c, s, pid) = (
            cfg.display().to_string(),
            ctl.display().to_string(),
            dir.join(format!("{name}.pid")),
        );
        let pid = pid.display().to_string();
        let mut args = vec!["bird", "-f", "-c", &c, "-s", &s, "-P", &pid];
        if recover {
            args.push("-R");
        }
        let child = ns.spawn_logged(&args, &log).expect("bird");
        Bird { _child: child, ctl }
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(args)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn established(&self, proto: &str) -> bool {
        self.cmd(&["show", "protocols", proto])
            .contains("Established")
    }
}

fn bird_conf(exports: &[&str], gr: bool) -> String {
    let routes: String = exports
        .iter()
        .map(|p| format!(" route {p} blackhole;"))
        .collect();
    format!(
        "router id {ROUTER};
protocol device {{ }}
protocol kernel k4 {{ ipv4 {{ import none; export where proto = \"agent\"; }}; learn no; }}
protocol static st4 {{ ipv4;{routes} }}
protocol bgp agent {{
  local {ROUTER} as {BIRD_AS}; neighbor {NODE} as {AGENT_AS}; strict bind yes;
  hold time 9; keepalive time 3; connect retry time 1; connect delay time 0;
  graceful restart {};
  ipv4 {{ import all; export where proto = \"st4\"; }};
}}
",
        if gr { "on" } else { "off" }
    )
}

fn bgp_report(agent: &AgentGuard) -> Value {
    agent.ctl_json(&["show", "bgp"]).expect("show bgp")
}

fn peer_state(agent: &AgentGuard, addr: &str) -> Value {
    bgp_report(agent)["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["address"] == addr)
        .cloned()
        .unwrap_or(Value::Null)
}

fn fib_paths(agent: &AgentGuard, prefix: &str) -> Vec<String> {
    let v = agent.ctl_json(&["show", "routes"]).expect("show routes");
    v.as_array()
        .expect("routes")
        .iter()
        .find(|r| r["prefix"] == prefix && r["source"] == "bgp")
        .map(|r| {
            let mut hops: Vec<String> = r["paths"]
                .as_array()
                .expect("paths")
                .iter()
                .map(|p| p["via"].as_str().unwrap_or("").to_string())
                .collect();
            hops.sort();
            hops
        })
        .unwrap_or_default()
}

fn kernel_routes(ns: &Netns, proto: &str) -> String {
    ns.ip(&["route", "show", "proto", proto]).expect("ip route")
}

fn gobgp(ns: &Netns, port: u16, args: &[&str]) -> String {
    let p = port.to_string();
    let mut a = vec!["gobgp", "-p", &p];
    a.extend_from_slice(args);
    match ns.exec(&a) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("{e}"),
    }
}

#[test]
fn bird_and_gobgp_routes_both_ways_ecmp_and_withdraw() {
    if !require_root() {
        return;
    }
    let yaml = bgp_yaml(&[(ROUTER, BIRD_AS), (ROUTER2, GOBGP_AS)], false);
    let topo = setup(&yaml, 1);
    topo.router
        .add_addr(Topology::ROUTER_IF, &format!("{ROUTER2}/24"))
        .expect("second address");
    let bird = Bird::start(
        &topo.router,
        topo.dir(),
        "bird",
        &bird_conf(&["10.99.0.0/24", "10.98.0.0/24"], false),
        false,
    );
    let api = 50000 + (std::process::id() % 1000) as u16;
    let toml = format!(
        "[global.config]\n  as = {GOBGP_AS}\n  router-id = \"{ROUTER2}\"\n  local-address-list = [\"{ROUTER2}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{NODE}\"\n    peer-as = {AGENT_AS}\n\
         [neighbors.transport.config]\n    local-address = \"{ROUTER2}\"\n\
         [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n"
    );
    let tpath = topo.dir().join("gobgp.toml");
    std::fs::write(&tpath, toml).expect("gobgp toml");
    let t = tpath.display().to_string();
    let hosts = format!("127.0.0.1:{api}");
    let _gobgpd = topo
        .router
        .spawn_logged(
            &[
                "gobgpd",
                "-f",
                &t,
                "-p",
                "--api-hosts",
                &hosts,
                "--pprof-disable",
            ],
            &topo.dir().join("gobgpd.log"),
        )
        .expect("gobgpd");
    let agent = start_agent(&topo);

    wait_for("BIRD session", 20, || bird.established("agent"));
    wait_for("GoBGP session", 30, || {
        serde_json::from_str::<Value>(&gobgp(&topo.router, api, &["neighbor", NODE, "-j"]))
            .map(|v| v["state"]["session_state"] == 6)
            .unwrap_or(false)
    });
    wait_for("agent sees both Established", 10, || {
        peer_state(&agent, ROUTER)["state"] == "Established"
            && peer_state(&agent, ROUTER2)["state"] == "Established"
    });
    wait_for("gobgp route add", 15, || {
        topo.router
            .exec(&[
                "gobgp",
                "-p",
                &api.to_string(),
                "global",
                "rib",
                "add",
                "-a",
                "ipv4",
                "10.98.0.0/24",
                "nexthop",
                ROUTER2,
                "origin",
                "igp",
            ])
            .is_ok()
    });

    // Ours at BIRD (into its kernel table) and at GoBGP.
    wait_for("BIRD installs the pod CIDR", 10, || {
        kernel_routes(&topo.router, "bird").contains("10.244.1.0/24 via 192.168.100.2")
    });
    wait_for("GoBGP has the pod CIDR", 15, || {
        let v: Value = serde_json::from_str(&gobgp(
            &topo.router,
            api,
            &["global", "rib", "-a", "ipv4", "10.244.1.0/24", "-j"],
        ))
        .unwrap_or(Value::Null);
        v.as_object().is_some_and(|o| !o.is_empty())
    });
    ping_ok(
        &topo.router,
        &topo.pods[0].ip.to_string(),
        2,
        "router -> pod over the BGP-learnt kernel route",
    );

    // Theirs in our FIB and kernel; two equal paths → ECMP.
    wait_for("BIRD route in the FIB", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    wait_for("ECMP group", 15, || {
        fib_paths(&agent, "10.98.0.0/24") == vec![ROUTER.to_string(), ROUTER2.to_string()]
    });
    let k = kernel_routes(&topo.node, PROTO);
    assert!(k.contains("10.99.0.0/24 via 192.168.100.1"), "{k}");
    assert!(
        k.contains("10.98.0.0/24") && k.contains("nexthop via 192.168.100.3"),
        "{k}"
    );
    let r = agent
        .ctl_json(&["show", "bgp", "routes", "10.98.0.7"])
        .expect("show bgp routes");
    let paths = r[0]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "{r}");
    assert!(paths.iter().all(|p| p["multipath"] == true), "{r}");
    let bird_peer = peer_state(&agent, ROUTER);
    assert_eq!(
        (
            bird_peer["received"].as_u64(),
            bird_peer["advertised"].as_u64()
        ),
        (Some(2), Some(1)),
        "{bird_peer}"
    );
    ping_ok(
        &topo.pods[0].ns,
        "10.99.0.1",
        2,
        "pod -> BIRD-announced network through the engine",
    );
    ping_ok(
        &topo.node,
        "10.99.0.1",
        2,
        "node host -> BIRD network via the kernel route",
    );
    let table = agent.ctl(&["show", "bgp"]).expect("show bgp table");
    assert!(table.contains("Established"), "{table}");

    // Withdrawals propagate to the FIB and the kernel.
    gobgp(
        &topo.router,
        api,
        &["global", "rib", "del", "-a", "ipv4", "10.98.0.0/24"],
    );
    wait_for("ECMP shrinks", 10, || {
        fib_paths(&agent, "10.98.0.0/24") == vec![ROUTER.to_string()]
    });
    bird.cmd(&["disable", "st4"]);
    wait_for("BIRD withdraw", 10, || {
        fib_paths(&agent, "10.99.0.0/24").is_empty()
    });
    wait_for("kernel route gone", 5, || {
        !kernel_routes(&topo.node, PROTO).contains("10.99.0.0/24")
    });

    // Our withdrawal: the agent stops (no graceful restart): Cease, BIRD drops the route.
    agent.stop();
    wait_for("BIRD removes our route", 10, || {
        !kernel_routes(&topo.router, "bird").contains("10.244.1.0/24")
    });
    wait_for("GoBGP removes our route", 15, || {
        let v: Value = serde_json::from_str(&gobgp(
            &topo.router,
            api,
            &["global", "rib", "-a", "ipv4", "10.244.1.0/24", "-j"],
        ))
        .unwrap_or(Value::Null);
        v.as_object().is_some_and(|o| o.is_empty())
    });
    assert!(
        kernel_routes(&topo.node, PROTO).trim().is_empty(),
        "no kernel routes left without graceful restart"
    );
}

#[test]
fn bird_graceful_restart_keeps_forwarding() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, BIRD_AS)], true), 1);
    let conf = bird_conf(&["10.99.0.0/24"], true);
    let bird = Bird::start(&topo.router, topo.dir(), "bird", &conf, false);
    let agent = start_agent(&topo);
    wait_for("session", 20, || bird.established("agent"));
    wait_for("route", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    let pod = &topo.pods[0].ns;
    ping_ok(pod, "10.99.0.1", 1, "pod -> BIRD network");

    // BIRD restarts gracefully: the session drops, we keep its routes as stale.
    bird.cmd(&["graceful", "restart"]);
    wait_for("session down", 10, || {
        peer_state(&agent, ROUTER)["state"] != "Established"
    });
    drop(bird);
    let st = peer_state(&agent, ROUTER);
    assert_eq!(st["stale"].as_u64(), Some(1), "{st}");
    assert_eq!(
        fib_paths(&agent, "10.99.0.0/24"),
        vec![ROUTER.to_string()],
        "kept in the FIB"
    );
    assert!(kernel_routes(&topo.node, PROTO).contains("10.99.0.0/24"));
    ping(pod, "10.99.0.1".parse().unwrap(), 2).expect("forwarding continues while BIRD is down");

    let bird = Bird::start(&topo.router, topo.dir(), "bird", &conf, true);
    wait_for("session back", 20, || bird.established("agent"));
    wait_for("stale cleared after End-of-RIB", 15, || {
        peer_state(&agent, ROUTER)["stale"] == 0
    });
    assert_eq!(fib_paths(&agent, "10.99.0.0/24"), vec![ROUTER.to_string()]);
    let r = agent
        .ctl_json(&["show", "bgp", "routes", "10.99.0.0/24"])
        .expect("routes");
    assert_eq!(r[0]["paths"][0]["stale"], false, "{r}");
}

/// Agent restart with graceful restart and `--on-exit keep`: BIRD keeps our route (stale)
/// and our kernel route stays while the agent is down, and forwarding continues meanwhile:
/// a ping from a pod to a BIRD-learnt address started before the stop gets replies while the
/// agent is down (XDP flow cache), a new flow does not (fail closed); after the restart the
/// session comes back and the route is fresh.
#[test]
fn agent_graceful_restart_keeps_routes_at_the_peer() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, BIRD_AS)], true), 1);
    let bird = Bird::start(
        &topo.router,
        topo.dir(),
        "bird",
        &bird_conf(&["10.99.0.0/24"], true),
        false,
    );
    let bpffs = ferroplane_e2e::BpffsMount::new().expect("bpffs");
    let pin = bpffs.path().join("node").to_string_lossy().to_string();
    let keep = ["--pin-dir", pin.as_str(), "--on-exit", "keep"];
    let agent = topo
        .start_agent_with(&bin_dir(), &keep)
        .expect("agent start");
    wait_for("session", 20, || bird.established("agent"));
    wait_for("BIRD installs the pod CIDR", 10, || {
        kernel_routes(&topo.router, "bird").contains("10.244.1.0/24")
    });
    wait_for("our kernel route", 10, || {
        kernel_routes(&topo.node, PROTO).contains("10.99.0.0/24")
    });
    wait_for("FIB", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    let far = "10.99.0.1".parse().expect("ip");
    let log = topo.dir().join("restart-ping.log");
    let flow = ContinuousPing::start(&topo.pods[0].ns, far, &log).expect("ping");
    std::thread::sleep(Duration::from_millis(1500));

    // Graceful stop: no NOTIFICATION, BIRD keeps our route (stale), our kernel route stays.
    agent.stop();
    drop(agent);
    let down_from = epoch_now();
    wait_for("BIRD session down", 10, || !bird.established("agent"));
    let r = bird.cmd(&["show", "route", "for", "10.244.1.10", "all"]);
    assert!(
        r.contains("10.244.1.0/24"),
        "BIRD withdrew our route during the restart:\n{r}"
    );
    assert!(kernel_routes(&topo.router, "bird").contains("10.244.1.0/24"));
    assert!(
        kernel_routes(&topo.node, PROTO).contains("10.99.0.0/24"),
        "kernel routes kept across the restart"
    );
    assert!(
        ping(&topo.pods[0].ns, far, 1).is_err(),
        "a new flow while the agent is down must not pass"
    );
    std::thread::sleep(Duration::from_secs(1));
    let down_until = epoch_now();

    let agent = topo
        .start_agent_with(&bin_dir(), &keep)
        .expect("agent restart");
    wait_for("session back", 20, || bird.established("agent"));
    let st = peer_state(&agent, ROUTER);
    assert_eq!(st["state"], "Established", "{st}");
    let r = bird.cmd(&["show", "protocols", "all", "agent"]);
    assert!(
        kernel_routes(&topo.router, "bird").contains("10.244.1.0/24"),
        "{r}"
    );
    wait_for("FIB", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    ping_ok(
        &topo.pods[0].ns,
        "10.99.0.1",
        2,
        "forwarding after the restart",
    );
    let times = flow.finish();
    let during = times
        .iter()
        .filter(|t| **t > down_from && **t < down_until)
        .count();
    assert!(
        during >= 5,
        "forwarding must continue while the agent restarts: {during} replies in the gap\n{}",
        flow.output()
    );
}

// ---- RFC 7606 against a hand-written peer ----------------------------------------

fn send(s: &mut TcpStream, m: &[u8]) {
    s.write_all(m).expect("send");
}

/// Read one message (skipping KEEPALIVEs when `skip_keepalive`).
fn recv(s: &mut TcpStream, skip_keepalive: bool) -> Option<Message> {
    loop {
        let mut h = [0u8; 19];
        s.read_exact(&mut h).ok()?;
        let len = u16::from_be_bytes([h[16], h[17]]) as usize;
        let mut b = h.to_vec();
        b.resize(len, 0);
        s.read_exact(&mut b[19..]).ok()?;
        let m = Message::decode(&b, &Ctx::default()).ok()?;
        if !(skip_keepalive && m == Message::Keepalive) {
            return Some(m);
        }
    }
}

fn raw_update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&((23 + attrs.len() + nlri.len()) as u16).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

const TEST_AS: u32 = 65010;

fn attrs(origin: &[u8], next_hop: &[u8], extra: &[u8]) -> Vec<u8> {
    let asn = TEST_AS.to_be_bytes();
    let mut a = origin.to_vec();
    a.extend_from_slice(&[0x40, 2, 6, 2, 1, asn[0], asn[1], asn[2], asn[3]]);
    a.extend_from_slice(next_hop);
    a.extend_from_slice(extra);
    a
}

#[test]
fn malformed_updates_get_rfc7606_treatment() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, TEST_AS)], false), 0);
    let listener = topo
        .router
        .run(|| TcpListener::bind(format!("{ROUTER}:179")))
        .expect("netns")
        .expect("bind 179 in the router namespace");
    let agent = start_agent(&topo);
    let (mut s, _) = listener.accept().expect("agent connects");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let Some(Message::Open(theirs)) = recv(&mut s, true) else {
        panic!("no OPEN")
    };
    assert_eq!(theirs.asn(), AGENT_AS);
    let open = Open::new(
        TEST_AS,
        30,
        Ipv4Addr::new(192, 168, 100, 1),
        vec![
            Capability::Multiprotocol(Afi::Ipv4),
            Capability::FourOctetAs(TEST_AS),
        ],
    );
    send(&mut s, &Message::Open(open).to_bytes(&Ctx::default()));
    send(&mut s, &Message::Keepalive.to_bytes(&Ctx::default()));
    wait_for("Established", 10, || {
        peer_state(&agent, ROUTER)["state"] == "Established"
    });
    let keepalive = Message::Keepalive.to_bytes(&Ctx::default());
    let origin = [0x40, 1, 1, 0];
    let nh = [0x40, 3, 4, 192, 168, 100, 1];
    let p50 = [24, 10, 50, 0];
    let p51 = [24, 10, 51, 0];

    // A good route first.
    send(&mut s, &raw_update(&attrs(&origin, &nh, &[]), &p50));
    wait_for("good route", 10, || {
        fib_paths(&agent, "10.50.0.0/24") == vec![ROUTER.to_string()]
    });

    // Attribute length error (NEXT_HOP of 5 octets) on the same prefix: treat-as-withdraw.
    send(&mut s, &keepalive);
    send(
        &mut s,
        &raw_update(
            &attrs(&origin, &[0x40, 3, 5, 192, 168, 100, 1, 0], &[]),
            &p50,
        ),
    );
    wait_for("treat-as-withdraw removes it", 10, || {
        fib_paths(&agent, "10.50.0.0/24").is_empty()
    });
    // Bad NEXT_HOP value (0.0.0.0), invalid ORIGIN, bad COMMUNITIES length: not installed.
    send(
        &mut s,
        &raw_update(&attrs(&origin, &[0x40, 3, 4, 0, 0, 0, 0], &[]), &p51),
    );
    send(
        &mut s,
        &raw_update(&attrs(&[0x40, 1, 1, 9], &nh, &[]), &p51),
    );
    send(
        &mut s,
        &raw_update(&attrs(&origin, &nh, &[0xc0, 8, 3, 1, 2, 3]), &p51),
    );
    // Attribute-discard (ATOMIC_AGGREGATE with a value): the route is installed.
    send(
        &mut s,
        &raw_update(&attrs(&origin, &nh, &[0x40, 6, 1, 0]), &p50),
    );
    wait_for("attribute-discard keeps the route", 10, || {
        fib_paths(&agent, "10.50.0.0/24") == vec![ROUTER.to_string()]
    });
    let st = peer_state(&agent, ROUTER);
    assert_eq!(st["state"], "Established", "session survives: {st}");
    assert_eq!(st["treat_as_withdraw"].as_u64(), Some(4), "{st}");
    assert_eq!(st["attributes_discarded"].as_u64(), Some(1), "{st}");
    assert!(fib_paths(&agent, "10.51.0.0/24").is_empty());

    // Unrecognized well-known attribute: RFC 4271 §6.3 NOTIFICATION 3/2, session reset.
    send(&mut s, &keepalive);
    send(
        &mut s,
        &raw_update(&attrs(&origin, &nh, &[0x40, 99, 0]), &p51),
    );
    let mut got = recv(&mut s, true);
    while let Some(Message::Update(_)) = got {
        got = recv(&mut s, true); // our own advertisement may come first
    }
    match got {
        Some(Message::Notification(n)) => {
            assert_eq!((n.code, n.subcode, n.data), (3, 2, vec![0x40, 99, 0]))
        }
        other => panic!("expected NOTIFICATION 3/2, got {other:?}"),
    }
    wait_for("session reset", 10, || {
        peer_state(&agent, ROUTER)["state"] != "Established"
    });
    wait_for("its routes withdrawn", 10, || {
        fib_paths(&agent, "10.50.0.0/24").is_empty()
    });
}

// ---- 3 ferroplane nodes in an iBGP full mesh ---------------------------------------

/// The FIB route for `prefix` on `agent`: (source, [(via, interface)]).
fn fib_route(agent: &AgentGuard, prefix: &str) -> Option<(String, Vec<(String, String)>)> {
    let v = agent.ctl_json(&["show", "routes"]).expect("show routes");
    v.as_array()
        .expect("routes")
        .iter()
        .find(|r| r["prefix"] == prefix)
        .map(|r| {
            let paths = r["paths"]
                .as_array()
                .expect("paths")
                .iter()
                .map(|p| {
                    (
                        p["via"].as_str().unwrap_or("").to_string(),
                        p["interface"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (r["source"].as_str().unwrap_or("").to_string(), paths)
        })
}

/// 3 nodes, 2 pods each, `mode`; the specs carry no remote pod CIDR. Sessions come up,
/// every node learns the other two pod CIDRs (source `bgp`, next hop per the overlay),
/// pods ping across nodes both ways and a TCP transfer goes through byte-exact.
fn full_mesh(mode: OverlayMode, port: u16) {
    let mut c = Cluster::new(3, 2, mode).expect("cluster");
    c.bgp = Some(ClusterBgp {
        graceful_restart: false, // a stopped node's routes go at once (checked at the end)
        ..ClusterBgp::default()
    });
    c.start(&bin_dir()).expect("agents");
    for (i, n) in c.nodes.iter().enumerate() {
        let spec = std::fs::read_to_string(&n.spec_path).expect("spec");
        for o in c.nodes.iter().filter(|o| o.index != n.index) {
            assert!(
                !spec.contains(&o.pod_cidr),
                "node {i}'s spec names {}'s pod CIDR:\n{spec}",
                o.name
            );
        }
        assert!(spec.contains("routes: []") || !spec.contains("routes:"));
    }

    wait_for("full mesh Established", 30, || {
        (0..3).all(|i| {
            let r = bgp_report(c.agent(i));
            let peers = r["peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["state"] == "Established")
        })
    });
    for (i, n) in c.nodes.iter().enumerate() {
        for o in c.nodes.iter().filter(|o| o.index != n.index) {
            let want_if = match mode {
                OverlayMode::Direct => Cluster::UPLINK_IF.to_string(),
                m => format!("{}-{}", m.as_str(), o.name),
            };
            wait_for(&format!("{} learns {}", n.name, o.pod_cidr), 15, || {
                fib_route(c.agent(i), &o.pod_cidr)
                    == Some((
                        "bgp".to_string(),
                        vec![(o.address.to_string(), want_if.clone())],
                    ))
            });
            let p = peer_state(c.agent(i), &o.address.to_string());
            assert_eq!(
                (p["received"].as_u64(), p["accepted"].as_u64()),
                (Some(1), Some(1)),
                "{p}"
            );
            assert_eq!(p["advertised"].as_u64(), Some(1), "{p}");
        }
        let r = bgp_report(c.agent(i));
        assert_eq!(r["fib_routes"].as_u64(), Some(2), "{r}");
    }
    let table = c.agent(0).ctl(&["show", "routes"]).expect("show routes");
    let line = table
        .lines()
        .find(|l| l.contains("10.244.2.0/24"))
        .unwrap_or_else(|| panic!("no route to node-2's pods:\n{table}"));
    assert!(line.contains("bgp"), "{line}");

    // Pods across nodes, every pair of nodes, both ways.
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                let to = c.nodes[b].pods[a % 2].ip.to_string();
                ping_ok(
                    &c.nodes[a].pods[b % 2].ns,
                    &to,
                    2,
                    &format!("node-{} pod -> node-{} pod", a + 1, b + 1),
                );
            }
        }
    }
    const MB: u64 = 1024 * 1024;
    let (a, d) = (&c.nodes[0], &c.nodes[2]);
    let s = tcp_transfer(&a.pods[0].ns, &d.pods[1].ns, d.pods[1].ip, port, 4 * MB)
        .expect("TCP node-1 pod -> node-3 pod");
    assert_eq!(s.bytes, 4 * MB);
    if mode != OverlayMode::Direct {
        // The bytes went through node-1's tunnel toward node-3.
        let r = c.agent(0).ctl_json(&["show", "tunnels"]).expect("tunnels");
        let p = r["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["name"] == "node-3")
            .cloned()
            .unwrap_or(Value::Null);
        assert!(p["tx_bytes"].as_u64().unwrap_or(0) >= 4 * MB, "{r}");
        assert_eq!(
            p["pod_cidrs"][0], "10.244.3.0/24",
            "learnt pod CIDR shown: {r}"
        );
    }
    // The node hosts reach remote pods through the kernel routes BGP installed.
    let k = kernel_routes(&c.nodes[0].ns, PROTO);
    assert!(
        k.contains(&format!("10.244.3.0/24 via {}", c.nodes[2].address)),
        "{k}"
    );
    ping_ok(
        &c.nodes[0].ns,
        &c.nodes[2].pods[0].ip.to_string(),
        2,
        "node-1 host -> node-3 pod",
    );

    // A node that goes away takes its pod CIDR with it.
    c.stop_node(2);
    wait_for("node-3's route withdrawn at node-1", 20, || {
        fib_route(c.agent(0), "10.244.3.0/24").is_none()
    });
    assert!(fib_route(c.agent(0), "10.244.2.0/24").is_some());
}

#[test]
fn full_mesh_of_three_nodes_direct() {
    if !require_root() {
        return;
    }
    full_mesh(OverlayMode::Direct, 47300);
}

#[test]
fn full_mesh_of_three_nodes_vxlan() {
    if !require_root() {
        return;
    }
    full_mesh(OverlayMode::Vxlan, 47310);
}

// ---- graceful restart with GoBGP, both roles ---------------------------------------

/// A gobgpd in the router namespace at [`ROUTER`] (AS [`GOBGP_AS`]) with graceful restart
/// (helper and restarting speaker) for IPv4 unicast; its API on `api`.
struct GoBgp {
    child: ChildGuard,
    api: u16,
    log: PathBuf,
}

impl Drop for GoBgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- gobgpd log (last 60 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn gobgp_gr_toml(restart_time: u16) -> String {
    format!(
        "[global.config]\n  as = {GOBGP_AS}\n  router-id = \"{ROUTER}\"\n  local-address-list = [\"{ROUTER}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{NODE}\"\n    peer-as = {AGENT_AS}\n\
         [neighbors.transport.config]\n    local-address = \"{ROUTER}\"\n\
         [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
         [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = {restart_time}\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n\
         [neighbors.afi-safis.mp-graceful-restart.config]\n    enabled = true\n"
    )
}

impl GoBgp {
    /// Start gobgpd; `restarting`: `-r` (Restart State bit: it kept forwarding).
    fn start(topo: &Topology, toml: &str, restarting: bool) -> GoBgp {
        let api = 51000 + (std::process::id() % 1000) as u16;
        let tpath = topo.dir().join("gobgp.toml");
        std::fs::write(&tpath, toml).expect("gobgp toml");
        let (t, hosts) = (tpath.display().to_string(), format!("127.0.0.1:{api}"));
        let mut args = vec![
            "gobgpd",
            "-f",
            &t,
            "-p",
            "--api-hosts",
            &hosts,
            "--pprof-disable",
            "-l",
            "debug",
        ];
        if restarting {
            args.push("-r");
        }
        let log = topo.dir().join("gobgpd.log");
        let child = topo.router.spawn_logged(&args, &log).expect("gobgpd");
        let g = GoBgp { child, api, log };
        wait_for("GoBGP API", 15, || {
            serde_json::from_str::<Value>(&g.cli(&topo.router, &["global", "-j"])).is_ok()
        });
        g
    }

    fn cli(&self, ns: &Netns, args: &[&str]) -> String {
        gobgp(ns, self.api, args)
    }

    fn neighbor(&self, ns: &Netns) -> Value {
        serde_json::from_str(&self.cli(ns, &["neighbor", NODE, "-j"])).unwrap_or(Value::Null)
    }

    fn established(&self, ns: &Netns) -> bool {
        self.neighbor(ns)["state"]["session_state"] == 6
    }

    /// GoBGP's paths for `prefix` (empty when it has none).
    fn rib(&self, ns: &Netns, prefix: &str) -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&self.cli(ns, &["global", "rib", "-a", "ipv4", prefix, "-j"]))
                .unwrap_or(Value::Null);
        v.get(prefix)
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default()
    }

    fn add(&self, ns: &Netns, prefix: &str) {
        let out = self.cli(
            ns,
            &[
                "global", "rib", "add", "-a", "ipv4", prefix, "nexthop", ROUTER, "origin", "igp",
            ],
        );
        assert!(!out.contains("error"), "gobgp rib add {prefix}: {out}");
    }
}

#[test]
fn gobgp_graceful_restart_keeps_its_routes_until_end_of_rib() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, GOBGP_AS)], true), 1);
    // GoBGP never installs kernel routes: the router's way back to the pods is static.
    topo.router
        .add_route(Topology::POD_CIDR, NODE)
        .expect("route back");
    // restart-time 120: long enough that only End-of-RIB can clear the stale routes
    // within this test.
    let toml = gobgp_gr_toml(120);
    let g = GoBgp::start(&topo, &toml, false);
    let agent = start_agent(&topo);
    wait_for("GoBGP session", 30, || g.established(&topo.router));
    g.add(&topo.router, "10.98.0.0/24");
    g.add(&topo.router, "10.97.0.0/24");
    wait_for("GoBGP routes in the FIB", 15, || {
        fib_paths(&agent, "10.98.0.0/24") == vec![ROUTER.to_string()]
            && fib_paths(&agent, "10.97.0.0/24") == vec![ROUTER.to_string()]
    });
    let st = peer_state(&agent, ROUTER);
    let caps = st["capabilities"].to_string();
    assert!(caps.contains("graceful-restart(time 120"), "{st}");
    wait_for("GoBGP has our pod CIDR", 15, || {
        !g.rib(&topo.router, "10.244.1.0/24").is_empty()
    });
    let pod = &topo.pods[0].ns;
    ping_ok(pod, "10.98.0.1", 1, "pod -> GoBGP network");

    // SIGKILL: gobgpd dies without NOTIFICATION (its documented graceful-restart way).
    g.child
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2));
    wait_for("session down", 15, || {
        peer_state(&agent, ROUTER)["state"] != "Established"
    });
    let st = peer_state(&agent, ROUTER);
    assert_eq!(st["stale"].as_u64(), Some(2), "{st}");
    for p in ["10.98.0.0/24", "10.97.0.0/24"] {
        assert_eq!(fib_paths(&agent, p), vec![ROUTER.to_string()], "{p} kept");
        let r = agent
            .ctl_json(&["show", "bgp", "routes", p])
            .expect("routes");
        assert_eq!(r[0]["paths"][0]["stale"], true, "{r}");
    }
    let k = kernel_routes(&topo.node, PROTO);
    assert!(
        k.contains("10.98.0.0/24 via 192.168.100.1") && k.contains("10.97.0.0/24"),
        "{k}"
    );
    ping(pod, "10.98.0.1".parse().expect("ip"), 2)
        .expect("forwarding continues while GoBGP is down");
    // Still there a few seconds later (not a race with the withdrawal).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(peer_state(&agent, ROUTER)["stale"].as_u64(), Some(2));

    // GoBGP comes back with the Restart State bit and announces only 10.98.0.0/24: after
    // its End-of-RIB that one is fresh and 10.97.0.0/24 is gone (long before the 120 s
    // restart timer could have removed it).
    // The neighbour starts administratively down so the route is in GoBGP's RIB before
    // the session (and its End-of-RIB) comes up.
    drop(g);
    let down = toml.replace(
        &format!("    peer-as = {AGENT_AS}\n"),
        &format!("    peer-as = {AGENT_AS}\n    admin-down = true\n"),
    );
    assert_ne!(down, toml);
    let g = GoBgp::start(&topo, &down, true);
    g.add(&topo.router, "10.98.0.0/24");
    g.cli(&topo.router, &["neighbor", NODE, "enable"]);
    // From here on 10.98.0.0/24 never leaves the FIB, 10.97.0.0/24 goes at End-of-RIB.
    let t = Instant::now();
    loop {
        assert_eq!(
            fib_paths(&agent, "10.98.0.0/24"),
            vec![ROUTER.to_string()],
            "10.98.0.0/24 left the FIB during the restart"
        );
        let st = peer_state(&agent, ROUTER);
        if st["state"] == "Established" && st["stale"] == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no End-of-RIB from the restarted GoBGP: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("10.97.0.0/24 (not re-announced) out of the FIB", 5, || {
        fib_paths(&agent, "10.97.0.0/24").is_empty()
    });
    assert!(g.established(&topo.router));
    let st = peer_state(&agent, ROUTER);
    assert!(
        st["capabilities"]
            .to_string()
            .contains("graceful-restart(time 120, restarting)"),
        "GoBGP's OPEN carries the Restart State bit: {st}"
    );
    let r = agent
        .ctl_json(&["show", "bgp", "routes", "10.98.0.0/24"])
        .expect("routes");
    assert_eq!(r[0]["paths"][0]["stale"], false, "{r}");
    wait_for("kernel follows", 5, || {
        let k = kernel_routes(&topo.node, PROTO);
        k.contains("10.98.0.0/24") && !k.contains("10.97.0.0/24")
    });
    let st = peer_state(&agent, ROUTER);
    assert_eq!(st["state"], "Established", "{st}");
    ping_ok(
        pod,
        "10.98.0.1",
        1,
        "pod -> GoBGP network after the restart",
    );
    wait_for("GoBGP relearns our pod CIDR", 15, || {
        !g.rib(&topo.router, "10.244.1.0/24").is_empty()
    });
}

#[test]
fn agent_graceful_restart_with_gobgp_as_helper() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, GOBGP_AS)], true), 1);
    // GoBGP never installs kernel routes: the router's way back to the pods is static.
    topo.router
        .add_route(Topology::POD_CIDR, NODE)
        .expect("route back");
    let g = GoBgp::start(&topo, &gobgp_gr_toml(120), false);
    let agent = start_agent(&topo);
    wait_for("GoBGP session", 30, || g.established(&topo.router));
    g.add(&topo.router, "10.98.0.0/24");
    wait_for("GoBGP has our pod CIDR", 15, || {
        !g.rib(&topo.router, "10.244.1.0/24").is_empty()
    });
    let opens =
        |g: &GoBgp| g.neighbor(&topo.router)["state"]["messages"]["received"]["open"].as_u64();
    assert_eq!(opens(&g), Some(1));
    wait_for("our kernel route", 10, || {
        kernel_routes(&topo.node, PROTO).contains("10.98.0.0/24")
    });

    // Graceful stop: GoBGP keeps our route, marked stale, for its restart time.
    agent.stop();
    drop(agent);
    wait_for("GoBGP session down", 15, || !g.established(&topo.router));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let paths = g.rib(&topo.router, "10.244.1.0/24");
        assert!(
            !paths.is_empty(),
            "GoBGP withdrew our route during the restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let paths = g.rib(&topo.router, "10.244.1.0/24");
    assert_eq!(paths[0]["stale"], true, "kept as stale: {paths:?}");
    assert!(
        kernel_routes(&topo.node, PROTO).contains("10.98.0.0/24"),
        "our kernel routes kept across the restart"
    );

    let agent = start_agent(&topo);
    wait_for("session back", 30, || g.established(&topo.router));
    wait_for(
        "our route fresh again at GoBGP after our End-of-RIB",
        15,
        || {
            let p = g.rib(&topo.router, "10.244.1.0/24");
            p.len() == 1 && p[0]["stale"] != true
        },
    );
    assert_eq!(opens(&g), Some(2), "a new session, not the old one");
    wait_for("FIB", 15, || {
        fib_paths(&agent, "10.98.0.0/24") == vec![ROUTER.to_string()]
    });
    let st = peer_state(&agent, ROUTER);
    assert!(
        st["capabilities"].to_string().contains("graceful-restart"),
        "{st}"
    );
    ping_ok(
        &topo.pods[0].ns,
        "10.98.0.1",
        2,
        "forwarding after the restart",
    );
}

// ---- IPv6 unicast over an IPv4 session (kernel routes only) --------------------------

const ROUTER6: &str = "fd00:100::1";
const NODE6: &str = "fd00:100::2";

/// Turn IPv6 back on for the uplink pair (the topology disables it) with ULA addresses.
fn enable_ipv6(topo: &Topology) {
    for (ns, ifname, addr) in [
        (&topo.router, Topology::ROUTER_IF, ROUTER6),
        (&topo.node, Topology::UPLINK_IF, NODE6),
    ] {
        for k in ["all", "default", ifname, "lo"] {
            ns.set_sysctl(&format!("net.ipv6.conf.{k}.disable_ipv6"), "0")
                .expect("enable IPv6");
        }
        ns.ip(&["addr", "add", &format!("{addr}/64"), "dev", ifname, "nodad"])
            .expect("IPv6 address");
    }
    topo.router
        .ip(&["addr", "add", "fd00:99::1/128", "dev", "lo"])
        .expect("lo IPv6");
}

fn bird_conf_v6() -> String {
    format!(
        "router id {ROUTER};
protocol device {{ }}
protocol kernel k4 {{ ipv4 {{ import none; export where proto = \"agent\"; }}; learn no; }}
protocol kernel k6 {{ ipv6 {{ import none; export where proto = \"agent\"; }}; learn no; }}
protocol static st4 {{ ipv4; route 10.99.0.0/24 blackhole; }}
protocol static st6 {{ ipv6; route fd00:99::/64 blackhole; route fd00:98::/64 blackhole; }}
protocol bgp agent {{
  local {ROUTER} as {BIRD_AS}; neighbor {NODE} as {AGENT_AS}; strict bind yes;
  hold time 9; keepalive time 3; connect retry time 1; connect delay time 0;
  ipv4 {{ import all; export where proto = \"st4\"; }};
  ipv6 {{ import all; export where proto = \"st6\"; next hop address {ROUTER6}; }};
}}
"
    )
}

#[test]
fn ipv6_routes_both_ways_over_an_ipv4_session() {
    if !require_root() {
        return;
    }
    let yaml = bgp_yaml(&[(ROUTER, BIRD_AS)], false).replace(
        "  peers:\n",
        &format!(
            "  nextHopV6: {NODE6}\n  advertise:\n    ipv6Prefixes: [fd00:44::/64]\n  peers:\n"
        ),
    );
    let topo = setup(&yaml, 1);
    enable_ipv6(&topo);
    let bird = Bird::start(&topo.router, topo.dir(), "bird", &bird_conf_v6(), false);
    let agent = start_agent(&topo);
    wait_for("session", 20, || bird.established("agent"));
    let st = peer_state(&agent, ROUTER);
    assert!(
        st["capabilities"].to_string().contains("ipv6-unicast"),
        "IPv6 unicast negotiated: {st}"
    );

    // Theirs: IPv6 kernel routes with our protocol number, never in the (IPv4) engine FIB.
    let k6 = || {
        topo.node
            .ip(&["-6", "route", "show", "proto", PROTO])
            .expect("ip -6 route")
    };
    wait_for("IPv6 kernel routes", 15, || {
        let k = k6();
        k.contains(&format!("fd00:99::/64 via {ROUTER6}")) && k.contains("fd00:98::/64")
    });
    wait_for("IPv4 route too", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    let routes = agent.ctl_json(&["show", "routes"]).expect("show routes");
    assert!(
        !routes.to_string().contains("fd00:"),
        "no IPv6 in the engine FIB: {routes}"
    );
    let r = agent
        .ctl_json(&["show", "bgp", "routes", "fd00:99::/64"])
        .expect("show bgp routes");
    assert_eq!(r[0]["paths"][0]["next_hop"], ROUTER6, "{r}");
    assert_eq!(r[0]["installed"], "kernel", "{r}");
    let r4 = agent
        .ctl_json(&["show", "bgp", "routes", "10.99.0.0/24"])
        .expect("show bgp routes");
    assert_eq!(r4[0]["installed"], "engine", "{r4}");
    let text = agent.ctl(&["show", "bgp", "routes"]).expect("table");
    assert!(text.contains("IPv4-only"), "{text}");
    topo.node
        .exec_ok(&["ping", "-6", "-c", "2", "-W", "2", "fd00:99::1"])
        .expect("node -> BIRD's IPv6 network over the learnt kernel route");

    // Ours: the configured IPv6 prefix with the configured next hop, in BIRD's kernel.
    wait_for("BIRD installs our IPv6 prefix", 15, || {
        topo.router
            .ip(&["-6", "route", "show", "proto", "bird"])
            .map(|k| k.contains(&format!("fd00:44::/64 via {NODE6}")))
            .unwrap_or(false)
    });
    let st = peer_state(&agent, ROUTER);
    assert_eq!(
        (st["received"].as_u64(), st["advertised"].as_u64()),
        (Some(3), Some(2)),
        "{st}"
    );

    // Withdrawal: one prefix, then the whole static protocol.
    std::fs::write(
        topo.dir().join("bird.conf"),
        bird_conf_v6().replace(" route fd00:98::/64 blackhole;", ""),
    )
    .expect("bird conf");
    bird.cmd(&["configure"]);
    wait_for("fd00:98::/64 withdrawn from the kernel", 10, || {
        let k = k6();
        !k.contains("fd00:98::/64") && k.contains("fd00:99::/64")
    });
    bird.cmd(&["disable", "st6"]);
    wait_for("every IPv6 route withdrawn", 10, || k6().trim().is_empty());
    assert!(agent
        .ctl_json(&["show", "bgp", "routes", "fd00:99::/64"])
        .expect("routes")
        .as_array()
        .is_some_and(|a| a.is_empty()));
    assert_eq!(
        fib_paths(&agent, "10.99.0.0/24"),
        vec![ROUTER.to_string()],
        "IPv4 untouched"
    );
}

// ---- TCP-MD5 (RFC 2385) ------------------------------------------------------------

#[test]
fn tcp_md5_password_with_bird() {
    if !require_root() {
        return;
    }
    let yaml = bgp_yaml(&[(ROUTER, BIRD_AS)], false).replace(
        &format!("      as: {BIRD_AS}\n"),
        &format!("      as: {BIRD_AS}\n      password: \"fp-s3cret\"\n"),
    );
    assert!(yaml.contains("password"));
    let topo = setup(&yaml, 1);
    let conf = |pw: &str| {
        bird_conf(&["10.99.0.0/24"], false).replace(
            "strict bind yes;",
            &format!("strict bind yes; password \"{pw}\";"),
        )
    };
    // Wrong password first: every segment is dropped, the session never comes up.
    let bird = Bird::start(&topo.router, topo.dir(), "bird", &conf("wrong"), false);
    let agent = start_agent(&topo);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        assert!(
            !bird.established("agent"),
            "Established with a wrong password"
        );
        assert_ne!(peer_state(&agent, ROUTER)["state"], "Established");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The node's kernel dropped BIRD's wrongly signed segments.
    let nstat = topo
        .node
        .exec_ok(&["nstat", "-az", "TcpExtTCPMD5Failure"])
        .expect("nstat");
    let failures: u64 = nstat
        .lines()
        .find(|l| l.starts_with("TcpExtTCPMD5Failure"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(failures > 0, "no MD5 failures counted: {nstat}");

    // The right one: session, routes both ways.
    std::fs::write(topo.dir().join("bird.conf"), conf("fp-s3cret")).expect("bird conf");
    bird.cmd(&["configure"]);
    bird.cmd(&["restart", "agent"]);
    wait_for("session with the right password", 20, || {
        bird.established("agent")
    });
    wait_for("BIRD route in the FIB", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    wait_for("BIRD installs the pod CIDR", 10, || {
        kernel_routes(&topo.router, "bird").contains("10.244.1.0/24 via 192.168.100.2")
    });
    ping_ok(&topo.pods[0].ns, "10.99.0.1", 2, "pod -> BIRD network");
}

#[test]
fn ipv6_session_with_gobgp() {
    if !require_root() {
        return;
    }
    // Passive: GoBGP connects to our dual-stack listener over IPv6.
    let yaml = bgp_yaml(&[(ROUTER6, GOBGP_AS)], false)
        .replace(
            "  peers:\n",
            "  advertise:\n    ipv6Prefixes: [fd00:44::/64]\n  peers:\n",
        )
        .replace(
            &format!("      as: {GOBGP_AS}\n"),
            &format!("      as: {GOBGP_AS}\n      passive: true\n"),
        );
    assert!(yaml.contains("passive: true"));
    let topo = setup(&yaml, 1);
    enable_ipv6(&topo);
    let toml = format!(
        "[global.config]\n  as = {GOBGP_AS}\n  router-id = \"{ROUTER}\"\n  local-address-list = [\"{ROUTER6}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{NODE6}\"\n    peer-as = {AGENT_AS}\n\
         [neighbors.transport.config]\n    local-address = \"{ROUTER6}\"\n\
         [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv6-unicast\"\n"
    );
    let g = GoBgp::start(&topo, &toml, false);
    let agent = start_agent(&topo);
    let established = || {
        serde_json::from_str::<Value>(&g.cli(&topo.router, &["neighbor", NODE6, "-j"]))
            .map(|v| v["state"]["session_state"] == 6)
            .unwrap_or(false)
    };
    wait_for("GoBGP session over IPv6", 30, established);
    let st = peer_state(&agent, ROUTER6);
    assert_eq!(st["state"], "Established", "{st}");
    assert!(
        st["capabilities"].to_string().contains("ipv6-unicast"),
        "{st}"
    );
    let out = g.cli(
        &topo.router,
        &[
            "global",
            "rib",
            "add",
            "-a",
            "ipv6",
            "fd00:99::/64",
            "nexthop",
            ROUTER6,
        ],
    );
    assert!(!out.contains("error"), "{out}");

    // Theirs into the kernel (proto 157), ours at GoBGP with our session address as next hop.
    let k6 = || {
        topo.node
            .ip(&["-6", "route", "show", "proto", PROTO])
            .expect("ip -6 route")
    };
    wait_for("IPv6 kernel route", 15, || {
        k6().contains(&format!("fd00:99::/64 via {ROUTER6}"))
    });
    wait_for("GoBGP has our IPv6 prefix", 15, || {
        let v: Value = serde_json::from_str(&g.cli(
            &topo.router,
            &["global", "rib", "-a", "ipv6", "fd00:44::/64", "-j"],
        ))
        .unwrap_or(Value::Null);
        v.to_string().contains(NODE6)
    });
    topo.node
        .exec_ok(&["ping", "-6", "-c", "2", "-W", "2", "fd00:99::1"])
        .expect("node -> GoBGP's IPv6 network over the learnt kernel route");
    let out = g.cli(
        &topo.router,
        &["global", "rib", "del", "-a", "ipv6", "fd00:99::/64"],
    );
    assert!(!out.contains("error"), "{out}");
    wait_for("withdrawn from the kernel", 10, || k6().trim().is_empty());
}

/// The service spec of [`service_addresses_follow_their_local_endpoints`]: `web`
/// (externalTrafficPolicy Local: LB IP 203.0.113.40, external IP 203.0.113.41) with one
/// endpoint on this node, ready or not, and `any` (Cluster: LB IP 203.0.113.42) without
/// endpoints.
fn advertised_services(pod: Ipv4Addr, ready: bool) -> String {
    [
        "serviceProxy:",
        "  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]",
        "services:",
        "  - metadata: { name: web, namespace: default }",
        "    spec:",
        "      type: LoadBalancer",
        "      externalTrafficPolicy: Local",
        "      healthCheckNodePort: 32100",
        "      externalIPs: [203.0.113.41]",
        "      ports: [ { name: http, port: 80, targetPort: 8080, nodePort: 30090 } ]",
        "    status: { loadBalancer: { ingress: [ { ip: 203.0.113.40 } ] } }",
        "  - metadata: { name: any, namespace: default }",
        "    spec:",
        "      type: LoadBalancer",
        "      externalTrafficPolicy: Cluster",
        "      ports: [ { name: http, port: 80, targetPort: 8080, nodePort: 30091 } ]",
        "    status: { loadBalancer: { ingress: [ { ip: 203.0.113.42 } ] } }",
        "endpointSlices:",
        "  - metadata: { name: web-a, namespace: default, labels: { kubernetes.io/service-name: web } }",
        "    addressType: IPv4",
        "    ports: [ { name: http, protocol: TCP, port: 8080 } ]",
        "    endpoints:",
        &format!("      - addresses: [{pod}]"),
        &format!("        conditions: {{ ready: {ready}, serving: {ready}, terminating: false }}"),
        "        nodeName: node-1",
        "        targetRef: { kind: Pod, namespace: default, name: pod0 }",
        "",
    ]
    .join("\n")
}

/// `bgp.advertise.loadBalancerIPs` / `externalIPs`: an externalTrafficPolicy=Local
/// service's addresses are advertised only while this node has a ready endpoint of it and
/// are withdrawn when the last one goes (and come back with it), as the spec file changes
/// under the running agent; a Cluster service's address is advertised regardless. Checked
/// in BIRD's kernel table on the router.
#[test]
fn service_addresses_follow_their_local_endpoints() {
    if !require_root() {
        return;
    }
    let bgp = bgp_yaml(&[(ROUTER, BIRD_AS)], false)
        + "  advertise:\n    externalIPs: true\n    loadBalancerIPs: true\n";
    let topo = setup(&bgp, 1);
    let base = std::fs::read_to_string(topo.spec_path()).expect("spec");
    let pod = topo.pods[0].ip;
    topo.write_spec(&(base.clone() + &advertised_services(pod, true)))
        .expect("spec");
    let bird = Bird::start(
        &topo.router,
        topo.dir(),
        "bird",
        &bird_conf(&[], false),
        false,
    );
    let agent = start_agent(&topo);
    wait_for("session", 20, || bird.established("agent"));
    let has =
        |addr: &str| kernel_routes(&topo.router, "bird").contains(&format!("{addr} via {NODE}"));
    wait_for("LB, external and Cluster IPs at BIRD", 15, || {
        has("203.0.113.40") && has("203.0.113.41") && has("203.0.113.42")
    });
    assert!(has("10.244.1.0/24"), "the pod CIDR too");

    // The only local endpoint stops being ready: the Local service's addresses go.
    topo.write_spec(&(base.clone() + &advertised_services(pod, false)))
        .expect("spec");
    wait_for("Local service's addresses withdrawn", 15, || {
        !has("203.0.113.40") && !has("203.0.113.41")
    });
    assert!(has("203.0.113.42"), "the Cluster service's address stays");
    assert!(has("10.244.1.0/24"), "the pod CIDR stays");
    let originated = bgp_report(&agent)["originated"].to_string();
    assert!(!originated.contains("203.0.113.40"), "{originated}");

    // Ready again: advertised again.
    topo.write_spec(&(base + &advertised_services(pod, true)))
        .expect("spec");
    wait_for("Local service's addresses back", 15, || {
        has("203.0.113.40") && has("203.0.113.41")
    });
}

#[test]
fn protocol_number_is_the_agents() {
    assert_eq!(
        PROTO,
        ferroplane_agent::bgp::RTPROT_FERROPLANE.to_string(),
        "the suite checks the agent's kernel routes by their protocol number"
    );
}

/// FRR's zebra running in a namespace with its own files (as MetalLB's FRR mode runs it
/// on a node), in the foreground (killed with the guard and the namespace). It drops to
/// the `frr` user, so its directory is world-writable (its own temp dir).
struct Zebra {
    _child: ChildGuard,
    dir: TempDir,
}

impl Zebra {
    fn start(ns: &Netns) -> Zebra {
        use std::os::unix::fs::PermissionsExt;
        const ZEBRA: &str = "/usr/lib/frr/zebra";
        assert!(
            Path::new(ZEBRA).exists(),
            "{ZEBRA} missing: install the Debian package frr (cargo xtask deps)"
        );
        let dir = TempDir::new("zebra").expect("zebra dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("zebra dir mode");
        let conf = dir.path().join("zebra.conf");
        std::fs::write(&conf, "hostname node-zebra\n").expect("zebra.conf");
        let p = |f: &str| dir.path().join(f).display().to_string();
        let (c, pid, api) = (conf.display().to_string(), p("zebra.pid"), p("zserv.api"));
        let vty = dir.path().display().to_string();
        let child = ns
            .spawn_logged(
                &[
                    ZEBRA,
                    "-f",
                    &c,
                    "-i",
                    &pid,
                    "-z",
                    &api,
                    "--vty_socket",
                    &vty,
                ],
                &dir.path().join("zebra.log"),
            )
            .expect("zebra");
        let z = Zebra { _child: child, dir };
        wait_for("zebra's vty", 10, || z.routes().is_object());
        z
    }

    /// `show ip route json` (Null while zebra does not answer).
    fn routes(&self) -> Value {
        let out = std::process::Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-c", "show ip route json"])
            .output()
            .expect("vtysh");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The protocols zebra has `prefix` from (`kernel`, `static`, `bgp`, ...).
    fn protocols(&self, prefix: &str) -> Vec<String> {
        self.routes()[prefix]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["protocol"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// FRR's zebra on the node (Debian `frr` 8.4): our kernel routes are plain kernel routes
/// to it (its `rt_protos.d/frr.conf` names 186-197 as its own; the agent used 196, its
/// `static`), so a route learnt and then withdrawn leaves the node's kernel and zebra's
/// table, and zebra never holds it as its own.
#[test]
fn zebra_on_the_node_does_not_adopt_our_routes() {
    if !require_root() {
        return;
    }
    let topo = setup(&bgp_yaml(&[(ROUTER, BIRD_AS)], false), 0);
    let zebra = Zebra::start(&topo.node);
    let bird = Bird::start(
        &topo.router,
        topo.dir(),
        "bird",
        &bird_conf(&["10.99.0.0/24"], false),
        false,
    );
    let agent = start_agent(&topo);
    wait_for("BIRD session", 20, || bird.established("agent"));
    wait_for("learnt route in the node's kernel", 10, || {
        kernel_routes(&topo.node, PROTO).contains("10.99.0.0/24 via 192.168.100.1")
    });
    wait_for("zebra sees it as a kernel route", 10, || {
        zebra.protocols("10.99.0.0/24") == vec!["kernel".to_string()]
    });
    // `show routes ADDRESS`: the route the engine uses for it (longest prefix match).
    let r = agent
        .ctl_json(&["show", "routes", "10.99.0.7"])
        .expect("show routes 10.99.0.7");
    assert_eq!(r.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(
        (r[0]["prefix"].as_str(), r[0]["source"].as_str()),
        (Some("10.99.0.0/24"), Some("bgp")),
        "{r}"
    );

    bird.cmd(&["disable", "st4"]);
    wait_for("BIRD withdraw in the FIB", 10, || {
        fib_paths(&agent, "10.99.0.0/24").is_empty()
    });
    let exact = || {
        topo.node
            .ip(&["route", "show", "10.99.0.0/24"])
            .expect("ip route")
    };
    wait_for(
        "route gone from the kernel, whatever its protocol",
        10,
        || exact().trim().is_empty(),
    );
    wait_for("route gone from zebra", 10, || {
        zebra.protocols("10.99.0.0/24").is_empty()
    });
    // And nobody puts it back.
    std::thread::sleep(Duration::from_secs(1));
    assert!(exact().trim().is_empty(), "{}", exact());
    assert!(zebra.protocols("10.99.0.0/24").is_empty());
}

/// The node is not a transit AS by default: what it learns from one peer (BIRD, AS 65001)
/// does not go on to another (a second BIRD, AS 65003), which gets only the node's own
/// pod CIDR.
#[test]
fn routes_from_one_peer_are_not_advertised_to_another() {
    if !require_root() {
        return;
    }
    const BIRD2_AS: u32 = 65003;
    let topo = setup(
        &bgp_yaml(&[(ROUTER, BIRD_AS), (ROUTER2, BIRD2_AS)], false),
        0,
    );
    topo.router
        .add_addr(Topology::ROUTER_IF, &format!("{ROUTER2}/24"))
        .expect("second address");
    let bird = Bird::start(
        &topo.router,
        topo.dir(),
        "bird",
        &bird_conf(&["10.99.0.0/24"], false),
        false,
    );
    let bird2 = Bird::start(
        &topo.router,
        topo.dir(),
        "bird2",
        &format!(
            "router id {ROUTER2};
protocol device {{ }}
protocol bgp agent {{
  local {ROUTER2} as {BIRD2_AS}; neighbor {NODE} as {AGENT_AS}; strict bind yes;
  hold time 9; keepalive time 3; connect retry time 1; connect delay time 0;
  ipv4 {{ import all; export none; }};
}}
"
        ),
        false,
    );
    let agent = start_agent(&topo);
    wait_for("both sessions", 20, || {
        bird.established("agent") && bird2.established("agent")
    });
    wait_for("the node learns BIRD's route", 10, || {
        fib_paths(&agent, "10.99.0.0/24") == vec![ROUTER.to_string()]
    });
    wait_for("the second peer gets the pod CIDR", 10, || {
        bird2
            .cmd(&["show", "route", "for", "10.244.1.0/24"])
            .contains("10.244.1.0/24")
    });
    // Give a transit route as long again as the pod CIDR took to arrive.
    std::thread::sleep(Duration::from_secs(2));
    let r = bird2.cmd(&["show", "route", "for", "10.99.0.0/24"]);
    assert!(
        !r.contains("10.99.0.0/24"),
        "transit route at the second peer: {r}"
    );
    let p2 = peer_state(&agent, ROUTER2);
    assert_eq!(
        p2["advertised"].as_u64(),
        Some(1),
        "only our own prefix: {p2}"
    );
}
