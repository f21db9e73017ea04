//! CNI input: `CNI_NETNS` naming the node's own network namespace, or a regular file, is
//! refused before anything is allocated (no reservation, no veth, no pod), with the spec's
//! error JSON (code 4, "invalid necessary environment variables": `CNI_NETNS` is one), and
//! the node's default route is left alone by ADD and by DEL.
//!
//! The plugin is invoked as a runtime does (`CNI_*` env, config on stdin) twice per case:
//! from the node namespace (where the agent runs: the plugin's own check refuses), and from
//! the router namespace (the plugin's namespace is then not the node's, so the request
//! reaches the agent, whose check is the authoritative one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroplane_e2e::cni::{ferroplane_conf, invoke, CniCall, CniEnv};
use ferroplane_e2e::topology::{AgentGuard, Topology};
use ferroplane_e2e::{bin_dir, bin_path, require_root, Netns};
use serde_json::Value;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Rig {
    topo: Topology,
    agent: AgentGuard,
    plugin: PathBuf,
    socket: PathBuf,
    state: PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let topo = Topology::single_node(0).expect("topology");
        let socket = topo.dir().join("cni.sock");
        let state = topo.dir().join("state");
        let (sock_s, state_s) = (socket.display().to_string(), state.display().to_string());
        let agent = topo
            .start_agent_with(
                &bin_dir(),
                &["--cni-socket", &sock_s, "--state-dir", &state_s],
            )
            .expect("agent start");
        let plugin = bin_path(&bin_dir(), "ferroplane-cni").expect("ferroplane-cni built");
        let rig = Rig {
            topo,
            agent,
            plugin,
            socket,
            state,
        };
        // STATUS answers once the socket serves.
        let start = std::time::Instant::now();
        while !rig
            .call(&rig.topo.node, &CniEnv::command_only("STATUS"))
            .ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "CNI socket not ready\n{}",
                rig.agent.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rig
    }

    fn call(&self, from: &Netns, env: &CniEnv) -> CniCall {
        let conf = ferroplane_conf("ferroplane", &self.socket).to_string();
        invoke(from, &self.plugin, env, &conf, CALL_TIMEOUT).expect("plugin ran")
    }

    /// Reservation files in the IPAM store.
    fn reservations(&self) -> Vec<String> {
        match std::fs::read_dir(self.state.join("ipam")) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The node's links, routes (`ip -j route show table all`, IPv4) and the agent's
    /// interfaces, to compare before and after.
    fn node_state(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let links: Value =
            serde_json::from_str(&self.topo.node.ip(&["-j", "link", "show"]).expect("ip link"))
                .expect("ip -j link");
        let mut links: Vec<String> = links
            .as_array()
            .expect("links")
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        links.sort();
        let mut routes: Vec<String> = self
            .topo
            .node
            .ip(&["-4", "route", "show", "table", "all"])
            .expect("ip route")
            .lines()
            .map(str::to_string)
            .collect();
        routes.sort();
        let ifaces = self
            .agent
            .ctl_json(&["show", "interfaces"])
            .expect("show interfaces");
        let mut ifaces: Vec<String> = ifaces
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ifaces.sort();
        (links, routes, ifaces)
    }

    fn default_route(&self) -> String {
        self.topo
            .node
            .ip(&["-4", "route", "show", "default"])
            .expect("ip route")
            .trim()
            .to_string()
    }
}

fn assert_refused(r: &CniCall, needle: &str, what: &str) {
    assert_ne!(r.exit, 0, "{what}: accepted: {r:?}");
    let v = r
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no error JSON on stdout: {r:?}"));
    assert_eq!(r.code(), Some(4), "{what}: {v}");
    assert_eq!(v["cniVersion"], "1.1.0", "{what}: {v}");
    let msg = v["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{what}: {needle:?} not in {v}");
}

#[test]
fn cni_netns_of_the_node_or_a_file_is_refused() {
    if !require_root() {
        return;
    }
    let rig = Rig::new();
    let node_ns = rig.topo.node.path().to_path_buf();
    let regular = rig.topo.dir().join("not-a-netns");
    std::fs::write(&regular, b"").expect("regular file");
    let default_before = rig.default_route();
    assert!(
        default_before.starts_with(&format!("default via {}", Topology::ROUTER_IP)),
        "{default_before}"
    );
    let before = rig.node_state();
    let cases: [(&Path, &str, &str); 2] = [
        (&node_ns, "own network namespace", "the node's namespace"),
        (&regular, "not a network namespace", "a regular file"),
    ];
    // From the node namespace (the plugin refuses) and from the router's (the agent does).
    let callers = [
        (&rig.topo.node, "from the node"),
        (&rig.topo.router, "from the router"),
    ];
    for (netns, needle, case) in cases {
        for (from, caller) in callers {
            let what = format!("ADD with {case} {caller}");
            let r = rig.call(from, &CniEnv::new("ADD", "hijack1", netns));
            assert_refused(&r, needle, &what);
            let what = format!("CHECK with {case} {caller}");
            let r = rig.call(from, &CniEnv::new("CHECK", "hijack1", netns));
            assert_ne!(r.exit, 0, "{what}: {r:?}");
            assert!(
                rig.reservations().is_empty(),
                "{what}: reserved {:?}",
                rig.reservations()
            );
            assert_eq!(rig.default_route(), default_before, "{what}: default route");
            assert_eq!(rig.node_state(), before, "{what}: node state changed");
        }
    }
    // DEL with the node's namespace is refused too, touching nothing; DEL with a file (a
    // namespace that is gone) succeeds and touches nothing of the node.
    for (from, caller) in callers {
        let r = rig.call(from, &CniEnv::new("DEL", "hijack1", &node_ns));
        assert_refused(
            &r,
            "own network namespace",
            &format!("DEL with the node's namespace {caller}"),
        );
        let r = rig.call(from, &CniEnv::new("DEL", "hijack1", &regular));
        assert!(r.ok(), "DEL with a regular file {caller}: {r:?}");
        assert_eq!(
            rig.default_route(),
            default_before,
            "DEL {caller}: default route"
        );
        assert_eq!(rig.node_state(), before, "DEL {caller}: node state changed");
    }
    // The agent logged the refusals it made itself (the router-side calls).
    let log = rig.agent.log_tail(400);
    assert!(
        log.contains("CNI request failed") && log.contains("own network namespace"),
        "the agent did not refuse anything itself:\n{}",
        rig.agent.log_tail(40)
    );
    // Still serving: a real pod namespace is accepted and released.
    let pod = Netns::new("cnipod").expect("netns");
    let r = rig.call(&rig.topo.node, &CniEnv::new("ADD", "good1", pod.path()));
    assert!(
        r.ok(),
        "ADD of a real pod: {r:?}\n{}",
        rig.agent.log_tail(30)
    );
    assert_eq!(rig.reservations().len(), 1);
    assert_eq!(rig.default_route(), default_before);
    let r = rig.call(&rig.topo.node, &CniEnv::new("DEL", "good1", pod.path()));
    assert!(r.ok(), "DEL of a real pod: {r:?}");
    assert!(rig.reservations().is_empty());
}
