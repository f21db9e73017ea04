//! CNI suite: `ferroplane-cni` invoked the way a container runtime invokes it (`CNI_*` env,
//! the network configuration on stdin, from the node namespace standing in for the host),
//! against the real agent, XDP and AF_XDP.
//!
//! - 50 pods: ADD (result shape, addresses, kernel state, traffic through the engine),
//!   CHECK, repeated ADD, VERSION, STATUS, DEL (repeatable, unknown container), GC.
//! - Every error path: malformed env and configs, unsupported versions, unknown fields,
//!   missing namespace, agent down, pool exhaustion.
//! - IPAM: 100 concurrent ADDs with the agent SIGKILLed midway, restart, finish: no address
//!   handed out twice, attachments survive, nothing leaks after GC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroplane_e2e::cni::{check_add_result, ferroplane_conf, invoke, CniCall, CniEnv};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, bin_path, ping, require_root, Netns};
use serde_json::Value;

const CALL_TIMEOUT: Duration = Duration::from_secs(90);
const NETWORK: &str = "ferroplane";

/// One node with the agent serving the CNI socket, and the plugin binary.
struct Node {
    topo: Topology,
    agent: Option<AgentGuard>,
    plugin: PathBuf,
    socket: PathBuf,
    state: PathBuf,
    extra: Vec<String>,
}

impl Node {
    fn start(pod_cidr: Option<&str>, extra: &[&str]) -> Node {
        let topo = Topology::single_node(0).expect("topology");
        if let Some(cidr) = pod_cidr {
            let spec = topo.spec_yaml().replace(Topology::POD_CIDR, cidr);
            topo.write_spec(&spec).expect("spec");
        }
        let socket = topo.dir().join("cni.sock");
        let state = topo.dir().join("state");
        let mut all: Vec<String> = vec![
            "--cni-socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni built");
        let mut node = Node {
            topo,
            agent: None,
            plugin,
            socket,
            state,
            extra: all,
        };
        node.start_agent();
        node
    }

    fn start_agent(&mut self) {
        let args: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let agent = self
            .topo
            .start_agent_with(&bin_dir(), &args)
            .expect("agent start");
        self.agent = Some(agent);
        self.wait_ready();
    }

    fn agent(&self) -> &AgentGuard {
        self.agent.as_ref().expect("agent running")
    }

    /// STATUS succeeds once the CNI socket serves (after restored attachments are plumbed).
    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let r = self.call(&CniEnv::command_only("STATUS"), &self.conf());
            if r.ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "CNI socket not ready: {r:?}\n{}",
                self.agent().log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn conf(&self) -> Value {
        ferroplane_conf(NETWORK, &self.socket)
    }

    fn call(&self, env: &CniEnv, conf: &Value) -> CniCall {
        self.call_raw(env, &conf.to_string())
    }

    fn call_raw(&self, env: &CniEnv, stdin: &str) -> CniCall {
        invoke(&self.topo.node, &self.plugin, env, stdin, CALL_TIMEOUT).expect("plugin ran")
    }

    fn add(&self, id: &str, ns: &Netns) -> CniCall {
        self.call(&CniEnv::new("ADD", id, ns.path()), &self.conf())
    }

    fn del(&self, id: &str, ns: &Netns) -> CniCall {
        self.call(&CniEnv::new("DEL", id, ns.path()), &self.conf())
    }

    fn check(&self, id: &str, ns: &Netns, prev: &Value) -> CniCall {
        let mut conf = self.conf();
        conf["prevResult"] = prev.clone();
        self.call(&CniEnv::new("CHECK", id, ns.path()), &conf)
    }

    fn gc(&self, keep: &[&str]) -> CniCall {
        let mut conf = self.conf();
        conf["cni.dev/valid-attachments"] = keep
            .iter()
            .map(|id| serde_json::json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        self.call(&CniEnv::command_only("GC"), &conf)
    }

    /// Reservation files in the IPAM store.
    fn reservations(&self) -> BTreeMap<Ipv4Addr, String> {
        let dir = self.state.join("ipam");
        std::fs::read_dir(&dir)
            .expect("IPAM dir")
            .filter_map(|e| {
                let e = e.ok()?;
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((ip, v["containerId"].as_str()?.to_string()))
            })
            .collect()
    }

    /// Host veths of CNI pods in the node namespace (names `fp` + 11 hex digits).
    fn pod_veths(&self) -> BTreeSet<String> {
        let out = self.topo.node.ip(&["-j", "link", "show"]).expect("ip link");
        let links: Value = serde_json::from_str(&out).expect("ip -j");
        links
            .as_array()
            .expect("links")
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| {
                n.len() == 13
                    && n.starts_with("fp")
                    && n[2..].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .map(str::to_string)
            .collect()
    }
}

fn pods(n: usize) -> Vec<Netns> {
    (0..n)
        .map(|i| Netns::new(&format!("c{i}")).expect("pod netns"))
        .collect()
}

fn id(i: usize) -> String {
    format!("ctr{i:04}")
}

fn host_if(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_string()
}

fn assert_code(r: &CniCall, code: u64, needle: &str) {
    assert_ne!(r.exit, 0, "expected failure code {code}: {r:?}");
    let v = r
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("no error JSON: {r:?}"));
    assert_eq!(r.code(), Some(code), "{v}");
    assert!(
        v["cniVersion"].is_string(),
        "error JSON without cniVersion: {v}"
    );
    let msg = v["msg"].as_str().unwrap_or_else(|| panic!("no msg: {v}"));
    let all = format!("{msg} {}", v["details"].as_str().unwrap_or(""));
    assert!(all.contains(needle), "{needle:?} not in {v}");
}

#[test]
fn cni_lifecycle_50_pods() {
    if !require_root() {
        return;
    }
    // A warm pool of 2: some ADDs adopt a spare, the rest are plumbed cold (both paths).
    let node = Node::start(None, &["--warm-pods", "2"]);
    let meta = std::fs::metadata(&node.socket).expect("socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "CNI socket must be root-only"
    );
    let pods = pods(50);

    // VERSION and STATUS need no container.
    let v = node.call_raw(
        &CniEnv::command_only("VERSION"),
        r#"{"cniVersion":"1.1.0"}"#,
    );
    assert!(v.ok(), "{v:?}");
    let versions = v.json.as_ref().expect("json")["supportedVersions"].clone();
    assert!(
        versions.as_array().expect("list").contains(&"1.1.0".into()),
        "{versions}"
    );
    let s = node.call(&CniEnv::command_only("STATUS"), &node.conf());
    assert!(s.ok() && s.stdout.trim().is_empty(), "{s:?}");

    let mut results = Vec::new();
    let mut ips = BTreeSet::new();
    for (i, ns) in pods.iter().enumerate() {
        let r = node.add(&id(i), ns);
        assert!(r.ok(), "ADD {i}: {r:?}\n{}", node.agent().log_tail(30));
        let v = r.json.clone().expect("result JSON");
        let netns = ns.path().display().to_string();
        check_add_result(&v, "1.1.0", &netns, "eth0")
            .unwrap_or_else(|e| panic!("ADD {i}: {e}: {v}"));
        assert_eq!(v["ips"][0]["gateway"], "169.254.1.1", "{v}");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0", "{v}");
        assert_eq!(
            v["dns"]["nameservers"][0], "10.96.0.10",
            "DNS passed through: {v}"
        );
        assert!(v["ips"][0]["address"]
            .as_str()
            .expect("address")
            .ends_with("/32"));
        let ip = r.ip().expect("ip");
        assert_eq!(
            u32::from(ip) >> 8,
            u32::from(Ipv4Addr::new(10, 244, 1, 0)) >> 8,
            "{ip} outside the pod CIDR"
        );
        assert!(ips.insert(ip), "{ip} handed out twice");
        results.push(v);
    }
    assert_eq!(node.reservations().len(), 50);
    assert_eq!(node.pod_veths().len(), 50);

    // Kernel state inside a pod: the address, the gateway route, the MTU from the result.
    let addr = pods[7]
        .ip(&["-j", "addr", "show", "eth0"])
        .expect("ip addr");
    assert!(
        addr.contains(
            &results[7]["ips"][0]["address"]
                .as_str()
                .expect("a")
                .replace("/32", "")
        ),
        "{addr}"
    );
    let routes = pods[7].ip(&["route", "show", "default"]).expect("ip route");
    assert!(routes.contains("via 169.254.1.1 dev eth0"), "{routes}");
    // XDP on every pod veth, traffic through the engine: pod <-> pod, router -> pod.
    let xdp = node.topo.node.ip(&["-j", "link", "show"]).expect("ip link");
    let with_xdp = serde_json::from_str::<Value>(&xdp)
        .expect("json")
        .as_array()
        .expect("a")
        .iter()
        .filter(|l| l.get("xdp").is_some())
        // The agent's warm pool: spare veths, XDP attached, waiting for the next ADD.
        .filter(|l| !l["ifname"].as_str().unwrap_or("").starts_with("fpsp"))
        .count();
    assert_eq!(with_xdp, 51, "uplink + 50 pod veths carry XDP");
    let ip_of = |i: usize| {
        results[i]["ips"][0]["address"]
            .as_str()
            .expect("a")
            .split('/')
            .next()
            .expect("ip")
            .parse::<Ipv4Addr>()
            .expect("ip")
    };
    ping(&pods[0], ip_of(49), 2).expect("pod0 -> pod49");
    ping(&pods[49], ip_of(0), 2).expect("pod49 -> pod0");
    ping(&node.topo.router, ip_of(10), 2).expect("router -> pod10");

    // CHECK every attachment against its ADD result.
    for (i, ns) in pods.iter().enumerate() {
        let r = node.check(&id(i), ns, &results[i]);
        assert!(r.ok() && r.stdout.trim().is_empty(), "CHECK {i}: {r:?}");
    }
    // CHECK with a wrong prevResult fails.
    let mut wrong = results[3].clone();
    wrong["ips"][0]["address"] = "10.244.1.250/32".into();
    assert_code(
        &node.check(&id(3), &pods[3], &wrong),
        101,
        "prevResult says 10.244.1.250",
    );
    // CHECK sees a pod's interface taken down.
    pods[4].ip(&["link", "set", "eth0", "down"]).expect("down");
    assert_code(&node.check(&id(4), &pods[4], &results[4]), 101, "down");
    pods[4].ip(&["link", "set", "eth0", "up"]).expect("up");
    pods[4]
        .ip(&[
            "route",
            "replace",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])
        .expect("route");
    pods[4]
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])
        .expect("route");
    assert!(node.check(&id(4), &pods[4], &results[4]).ok());

    // A repeated ADD for the same container/ifname answers the same attachment.
    let again = node.add(&id(5), &pods[5]);
    assert!(again.ok(), "{again:?}");
    assert_eq!(again.ip(), Some(ip_of(5)));
    assert_eq!(node.pod_veths().len(), 50);
    // The same container in another namespace is refused.
    assert_code(&node.add(&id(5), &pods[6]), 4, "already attached");

    // Chaining: ferroplane-cni after another plugin appends to prevResult.
    // (DEL first: the same container is then added with a prevResult from a loopback plugin.)
    let extra = Netns::new("chain").expect("netns");
    let mut conf = node.conf();
    conf["prevResult"] = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": extra.path().display().to_string()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
    });
    let chained = node.call(&CniEnv::new("ADD", "chained", extra.path()), &conf);
    assert!(chained.ok(), "{chained:?}");
    let cv = chained.json.clone().expect("json");
    assert_eq!(cv["interfaces"].as_array().expect("i").len(), 3, "{cv}");
    assert_eq!(cv["ips"][1]["interface"], 2, "{cv}");
    assert_eq!(cv["ips"][0]["address"], "127.0.0.1/8");
    assert!(node.del("chained", &extra).ok());

    // DEL the first 25: veth gone, address released; DEL again and DEL unknown succeed.
    for (i, ns) in pods.iter().enumerate().take(25) {
        let r = node.del(&id(i), ns);
        assert!(r.ok() && r.stdout.trim().is_empty(), "DEL {i}: {r:?}");
        assert!(
            !node.pod_veths().contains(&host_if(&results[i])),
            "veth of {i} left behind"
        );
    }
    assert!(node.del(&id(0), &pods[0]).ok(), "DEL is repeatable");
    let mut no_netns = CniEnv::new("DEL", "never-added", Path::new("/"));
    no_netns.netns = None;
    let r = node.call(&no_netns, &node.conf());
    assert!(
        r.ok(),
        "DEL of an unknown container without CNI_NETNS: {r:?}"
    );
    assert_code(
        &node.check(&id(0), &pods[0], &results[0]),
        101,
        "no address is reserved",
    );
    assert_eq!(node.reservations().len(), 25);
    assert_eq!(node.pod_veths().len(), 25);
    assert!(
        pods[0].ip(&["link", "show", "eth0"]).is_err(),
        "pod side removed with the pair"
    );

    // GC keeps pods 25..45 and removes 45..50 (veths, ports, addresses).
    let keep: Vec<String> = (25..45).map(id).collect();
    let keep_ref: Vec<&str> = keep.iter().map(String::as_str).collect();
    let r = node.gc(&keep_ref);
    assert!(r.ok() && r.stdout.trim().is_empty(), "GC: {r:?}");
    let left: BTreeSet<String> = node.reservations().into_values().collect();
    assert_eq!(left, keep.iter().cloned().collect::<BTreeSet<_>>());
    let veths = node.pod_veths();
    assert_eq!(veths.len(), 20, "{veths:?}");
    for (i, res) in results.iter().enumerate().skip(45) {
        assert!(!veths.contains(&host_if(res)), "GC left pod {i}'s veth");
    }
    ping(&node.topo.router, ip_of(30), 1).expect("router -> pod30 after GC");
    // Released addresses are handed out again; GC with nothing valid empties the node.
    let r = node.add("late", &pods[0]);
    assert!(r.ok(), "{r:?}");
    assert!(node.gc(&[]).ok());
    assert!(node.reservations().is_empty());
    assert!(node.pod_veths().is_empty(), "{:?}", node.pod_veths());
    let shown = node
        .agent()
        .ctl_json(&["show", "interfaces"])
        .expect("show interfaces");
    assert!(
        !shown.to_string().contains("cni/"),
        "engine still lists CNI pods: {shown}"
    );
    // Every pod's socket (50 pods, the chained one and the late one) was closed off
    // the engine's thread, by DEL or GC; once the reaper is done no port is still
    // closing and none of the pods' ports holds frames.
    let deadline = Instant::now() + Duration::from_secs(10);
    let buffers = loop {
        let b = node
            .agent()
            .ctl_json(&["show", "buffers"])
            .expect("show buffers");
        if b["closing_ports"] == 0 || Instant::now() > deadline {
            break b;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(buffers["closing_ports"], 0, "{buffers}");
    assert_eq!(buffers["closed_ports"], 52, "{buffers}");
    let pod_ifs: BTreeSet<String> = results.iter().map(host_if).collect();
    for p in buffers["ports"].as_array().expect("ports") {
        let name = p["interface"].as_str().unwrap_or_default();
        assert!(!pod_ifs.contains(name), "pod port left: {buffers}");
    }
}

#[test]
fn cni_error_paths() {
    if !require_root() {
        return;
    }
    let mut node = Node::start(None, &[]);
    let ns = Netns::new("err").expect("netns");
    let conf = node.conf();
    let env = CniEnv::new("ADD", "c1", ns.path());

    let mut e = env.clone();
    e.netns = None;
    assert_code(&node.call(&e, &conf), 4, "CNI_NETNS");
    let mut e = env.clone();
    e.command = None;
    assert_code(&node.call(&e, &conf), 4, "CNI_COMMAND");
    let mut e = env.clone();
    e.command = Some("ATTACH".into());
    assert_code(&node.call(&e, &conf), 4, "ATTACH");
    let mut e = env.clone();
    e.container_id = Some("bad id!".into());
    assert_code(&node.call(&e, &conf), 4, "CNI_CONTAINERID");
    let mut e = env.clone();
    e.ifname = Some("way-too-long-ifname".into());
    assert_code(&node.call(&e, &conf), 4, "CNI_IFNAME");
    let mut e = env.clone();
    e.container_id = None;
    assert_code(&node.call(&e, &conf), 4, "CNI_CONTAINERID");
    let mut e = env.clone();
    e.netns = Some("relative/path".into());
    assert_code(&node.call(&e, &conf), 4, "absolute");

    assert_code(
        &node.call_raw(&env, "{\"cniVersion\": \"1.1.0\", "),
        6,
        "not valid JSON",
    );
    assert_code(&node.call_raw(&env, ""), 6, "not valid JSON");
    assert_code(&node.call_raw(&env, "[]"), 6, "not a JSON object");
    let mut c = conf.clone();
    c["cniVersion"] = "0.2.0".into();
    assert_code(&node.call(&env, &c), 1, "0.2.0");
    let mut c = conf.clone();
    c["unknownKnob"] = 7.into();
    assert_code(&node.call(&env, &c), 2, "unknownKnob");
    let mut c = conf.clone();
    c["ipam"] = serde_json::json!({"type": "host-local"});
    assert_code(&node.call(&env, &c), 2, "ipam");
    let mut c = conf.clone();
    c.as_object_mut().expect("obj").remove("name");
    assert_code(&node.call(&env, &c), 7, "name");
    let mut c = conf.clone();
    c.as_object_mut().expect("obj").remove("cniVersion");
    assert_code(&node.call(&env, &c), 7, "cniVersion");
    let mut c = conf.clone();
    c["timeoutSeconds"] = "soon".into();
    assert_code(&node.call(&env, &c), 7, "timeoutSeconds");
    let mut c = conf.clone();
    c["cniVersion"] = "1.0.0".into();
    assert_code(
        &node.call(&CniEnv::command_only("STATUS"), &c),
        1,
        "STATUS needs cniVersion 1.1.0",
    );
    assert_code(
        &node.call(&CniEnv::command_only("GC"), &conf),
        7,
        "valid-attachments",
    );
    assert_code(
        &node.call(&CniEnv::new("CHECK", "c1", ns.path()), &conf),
        7,
        "prevResult",
    );
    // A namespace that does not exist: the container is unknown (code 3).
    assert_code(
        &node.call(
            &CniEnv::new("ADD", "c2", Path::new("/var/run/netns/fp-no-such-ns")),
            &conf,
        ),
        3,
        "does not exist",
    );
    // An older cniVersion gets its own result shape.
    let mut c = conf.clone();
    c["cniVersion"] = "0.4.0".into();
    let r = node.call(&env, &c);
    assert!(r.ok(), "{r:?}");
    let v = r.json.expect("json");
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["ips"][0]["version"], "4");
    assert!(node.del("c1", &ns).ok());

    // Agent down: ADD and DEL ask to try again later (11), STATUS says unavailable (50).
    let agent = node.agent.take().expect("agent");
    agent.stop();
    assert_code(&node.call(&env, &conf), 11, "try again later");
    assert_code(
        &node.call(&CniEnv::new("DEL", "c1", ns.path()), &conf),
        11,
        "cni.sock",
    );
    assert_code(
        &node.call(&CniEnv::command_only("STATUS"), &conf),
        50,
        "not available",
    );
    // VERSION still answers.
    assert!(node.call_raw(&CniEnv::command_only("VERSION"), "{}").ok());
    drop(agent);
    node.start_agent();
    assert!(node.call(&env, &conf).ok(), "back after a restart");
}

#[test]
fn cni_pool_exhaustion() {
    if !require_root() {
        return;
    }
    // A /29: six usable addresses.
    let node = Node::start(Some("10.244.1.0/29"), &[]);
    let pods = pods(7);
    for (i, ns) in pods.iter().enumerate().take(6) {
        let r = node.add(&id(i), ns);
        assert!(r.ok(), "{r:?}");
    }
    let r = node.add(&id(6), &pods[6]);
    assert_code(&r, 100, "no free address in pod CIDR 10.244.1.0/29");
    assert_code(
        &node.call(&CniEnv::command_only("STATUS"), &node.conf()),
        51,
        "no free address",
    );
    assert!(node.del(&id(2), &pods[2]).ok());
    assert!(node
        .call(&CniEnv::command_only("STATUS"), &node.conf())
        .ok());
    let r = node.add(&id(6), &pods[6]);
    assert!(r.ok(), "{r:?}");
}

#[test]
fn ipam_survives_sigkill_mid_add() {
    if !require_root() {
        return;
    }
    const N: usize = 100;
    let mut node = Node::start(None, &["--frames", "65536"]);
    let pods = Arc::new(pods(N));
    let node_ref = &node;

    // 100 concurrent ADDs; the agent is SIGKILLed once a third of the addresses are reserved.
    let first: Vec<CniCall> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let pods = pods.clone();
                s.spawn(move || node_ref.add(&id(i), &pods[i]))
            })
            .collect();
        let start = Instant::now();
        while node_ref.reservations().len() < N / 3 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = node_ref.agent().pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let before: Vec<usize> = (0..N).filter(|&i| first[i].ok()).collect();
    let failed: Vec<usize> = (0..N).filter(|&i| !first[i].ok()).collect();
    for &i in &failed {
        assert_eq!(
            first[i].code(),
            Some(11),
            "a failed ADD must say try again later: {:?}",
            first[i]
        );
    }
    assert!(
        !failed.is_empty(),
        "the kill came too late to interrupt anything"
    );
    eprintln!(
        "before the kill: {} ADDs done, {} interrupted",
        before.len(),
        failed.len()
    );
    let reserved_at_kill = node.reservations().len();

    // Restart on the same state; the runtime retries what failed.
    drop(node.agent.take());
    node.start_agent();
    let mut results: BTreeMap<usize, Value> = before
        .iter()
        .map(|&i| (i, first[i].json.clone().expect("json")))
        .collect();
    let node_ref = &node;
    let retried: Vec<(usize, CniCall)> = std::thread::scope(|s| {
        let handles: Vec<_> = failed
            .iter()
            .map(|&i| {
                let pods = pods.clone();
                (i, s.spawn(move || node_ref.add(&id(i), &pods[i])))
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().expect("thread")))
            .collect()
    });
    for (i, r) in retried {
        assert!(
            r.ok(),
            "retried ADD {i}: {r:?}\n{}",
            node.agent().log_tail(30)
        );
        results.insert(i, r.json.expect("json"));
    }
    let ips: Vec<Ipv4Addr> = results
        .values()
        .map(|v| {
            v["ips"][0]["address"]
                .as_str()
                .expect("a")
                .split('/')
                .next()
                .expect("ip")
                .parse()
                .expect("ip")
        })
        .collect();
    let unique: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(unique.len(), N, "an address was handed out twice");
    let store = node.reservations();
    assert_eq!(store.len(), N, "one reservation per attachment");
    assert!(reserved_at_kill <= N);
    // Attachments made before the kill kept their address and still pass CHECK.
    for &i in &before {
        let r = node.check(&id(i), &pods[i], &results[&i]);
        assert!(r.ok(), "CHECK {i} after restart: {r:?}");
    }
    let any = results[&before.first().copied().unwrap_or(0)]["ips"][0]["address"]
        .as_str()
        .expect("a")
        .split('/')
        .next()
        .expect("ip")
        .parse()
        .expect("ip");
    ping(&node.topo.router, any, 2).expect("router -> a pod plumbed before the kill");

    // The runtime removes half; GC with the other half as valid: nothing leaks.
    for i in 0..N / 2 {
        assert!(node.del(&id(i), &pods[i]).ok());
    }
    let keep: Vec<String> = (N / 2..N).map(id).collect();
    let keep_ref: Vec<&str> = keep.iter().map(String::as_str).collect();
    assert!(node.gc(&keep_ref).ok());
    let left = node.reservations();
    assert_eq!(left.len(), N / 2);
    for (ip, cid) in &left {
        let i: usize = cid.trim_start_matches("ctr").parse().expect("id");
        assert!(i >= N / 2, "{cid} should have been released");
        assert_eq!(
            results[&i]["ips"][0]["address"].as_str().expect("a"),
            format!("{ip}/32")
        );
    }
    assert_eq!(node.pod_veths().len(), N / 2);
    assert!(node.gc(&[]).ok());
    assert!(node.reservations().is_empty());
    assert!(node.pod_veths().is_empty());
}

/// Pods added through CNI are fed to the NetworkPolicy compiler under the Kubernetes
/// identity `CNI_ARGS` gives them (`K8S_POD_NAMESPACE`/`K8S_POD_NAME`: here `default` /
/// `pod-<container id>`, no labels without the watchers), so a default-deny ingress policy
/// of that namespace isolates them; traffic they start still gets its replies (stateful).
#[test]
fn cni_pods_get_network_policy() {
    if !require_root() {
        return;
    }
    let node = Node::start(None, &[]);
    let pods = pods(2);
    let mut ips = Vec::new();
    for (i, ns) in pods.iter().enumerate() {
        let r = node.add(&id(i), ns);
        assert!(r.ok(), "ADD {i}: {r:?}\n{}", node.agent().log_tail(30));
        ips.push(r.ip().expect("ip"));
    }
    ping(&pods[0], ips[1], 2).expect("no policy yet: pod0 -> pod1");
    // The pods carry the identity of their CNI_ARGS, not the attachment's.
    let v = node
        .agent()
        .ctl_json(&["show", "policies"])
        .expect("show policies");
    for i in 0..pods.len() {
        let name = format!("pod-{}", id(i));
        assert!(
            v["pods"].as_array().is_some_and(|ps| ps
                .iter()
                .any(|p| p["namespace"] == "default" && p["name"] == name.as_str())),
            "CNI pod {name} not known to policy as default/{name}: {v}"
        );
    }
    // The agent re-reads the spec file: add a default-deny ingress policy for `default`.
    let deny = serde_json::json!([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ingress", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}]);
    node.topo
        .write_spec(&format!(
            "{}networkPolicies: {deny}\n",
            node.topo.spec_yaml()
        ))
        .expect("spec");
    let start = Instant::now();
    let isolated = |v: &Value| {
        v["pods"].as_array().is_some_and(|ps| {
            ps.iter()
                .filter(|p| p["namespace"] == "default" && p["ingress"].is_object())
                .count()
                == 2
        })
    };
    loop {
        let v = node
            .agent()
            .ctl_json(&["show", "policies"])
            .expect("show policies");
        if isolated(&v) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "CNI pods not isolated by default/deny-ingress: {v}\n{}",
            node.agent().log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ping(&pods[0], ips[1], 2).is_err(),
        "pod1's ingress is denied by default/deny-ingress"
    );
    ping(&pods[0], Topology::ROUTER_IP, 2).expect("pod0 -> router: replies pass (stateful)");
    for (i, ns) in pods.iter().enumerate() {
        assert!(node.del(&id(i), ns).ok());
    }
}

/// Pods whose network namespace is deleted without CNI DEL (`ip netns del`, as a crashed
/// runtime leaves them): the agent sees their veths vanish (netlink link events), closes
/// their engine ports (their frames return to the pool) and reports them; the other pods
/// keep passing traffic; the addresses stay reserved until CNI DEL, which then succeeds.
#[test]
fn cni_vanished_pod_namespaces() {
    if !require_root() {
        return;
    }
    let node = Node::start(None, &[]);
    let mut pods = pods(8);
    let mut ips = Vec::new();
    let mut veths = Vec::new();
    for (i, ns) in pods.iter().enumerate() {
        let r = node.add(&id(i), ns);
        assert!(r.ok(), "ADD {i}: {r:?}");
        ips.push(r.ip().expect("ip"));
        veths.push(host_if(r.json.as_ref().expect("json")));
    }
    // Some traffic into the pods that will vanish, so their ports hold frames.
    for &ip in &ips[..5] {
        ping(&node.topo.router, ip, 1).expect("router -> pod");
    }
    let paths: Vec<PathBuf> = pods[..5].iter().map(|ns| ns.path().to_path_buf()).collect();
    // `ip netns del` of five pods, no DEL.
    drop(pods.drain(..5).collect::<Vec<_>>());

    let deadline = Instant::now() + Duration::from_secs(15);
    let (ifs, buffers) = loop {
        let ifs = node
            .agent()
            .ctl_json(&["show", "interfaces"])
            .expect("show interfaces");
        let b = node
            .agent()
            .ctl_json(&["show", "buffers"])
            .expect("show buffers");
        let vanished = ifs
            .as_array()
            .expect("interfaces")
            .iter()
            .filter(|i| i["state"] == "vanished")
            .count();
        if (vanished == 5 && b["closing_ports"] == 0 && b["closed_ports"] == 5)
            || Instant::now() > deadline
        {
            break (ifs, b);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for v in &veths[..5] {
        let i = ifs
            .as_array()
            .expect("interfaces")
            .iter()
            .find(|i| i["name"] == v.as_str())
            .unwrap_or_else(|| panic!("{v} not shown: {ifs}\n{}", node.agent().log_tail(30)));
        assert_eq!(i["state"], "vanished", "{i}");
        assert!(i["port"].is_null(), "{i}");
    }
    for v in &veths[5..] {
        let i = ifs
            .as_array()
            .expect("interfaces")
            .iter()
            .find(|i| i["name"] == v.as_str())
            .unwrap_or_else(|| panic!("{v} not shown: {ifs}"));
        assert_eq!(i["state"], "up", "{i}");
    }
    // Their ports are closed and hold nothing: the pool's fill/TX frames are all held by
    // the ports that remain (uplink and three pods).
    assert_eq!(buffers["closing_ports"], 0, "{buffers}");
    assert_eq!(buffers["closed_ports"], 5, "{buffers}");
    let ports = buffers["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 4, "{buffers}");
    for p in ports {
        let name = p["interface"].as_str().unwrap_or_default();
        assert!(
            !veths[..5].iter().any(|v| v == name),
            "vanished port left: {buffers}"
        );
    }
    let held = |k: &str| -> u64 { ports.iter().map(|p| p[k].as_u64().expect("n")).sum() };
    assert_eq!(
        held("fill_frames"),
        buffers["fill"].as_u64().expect("fill"),
        "{buffers}"
    );
    let log = std::fs::read_to_string(node.agent().log_path()).expect("log");
    assert_eq!(log.matches("pod interface vanished").count(), 5, "{log}");

    // The remaining pods pass traffic: a transfer between two of them, the router to one.
    let t = ferroplane_e2e::tcp_transfer(&pods[0], &pods[1], ips[6], 5201, 4 << 20)
        .expect("transfer pod5 -> pod6 after five pods vanished");
    assert_eq!(t.bytes, 4 << 20);
    ping(&node.topo.router, ips[7], 2).expect("router -> pod7");

    // The vanished pods keep their addresses until CNI DEL, which succeeds without the
    // namespace and removes them from show interfaces.
    assert_eq!(node.reservations().len(), 8);
    for (i, path) in paths.iter().enumerate() {
        let r = node.call(&CniEnv::new("DEL", &id(i), path), &node.conf());
        assert!(r.ok(), "DEL {i} of a vanished pod: {r:?}");
    }
    assert_eq!(node.reservations().len(), 3);
    let ifs = node
        .agent()
        .ctl_json(&["show", "interfaces"])
        .expect("show interfaces");
    assert!(
        !ifs.as_array()
            .expect("i")
            .iter()
            .any(|i| i["state"] == "vanished"),
        "{ifs}"
    );
    for (i, ns) in pods.iter().enumerate() {
        assert!(node.del(&id(i + 5), ns).ok());
    }
}
