//! Address hijack (the CVE-2020-8554 class): a Service whose `externalIPs` holds another
//! pod's address must not capture that pod's traffic.
//!
//! Single node, pods pod0 (client), pod1 (the service's backend, TCP 8080) and pod2 (its own
//! server on TCP 80). Each server answers a line with its name, so the client sees who
//! answered.
//! - A spec whose service claims pod2's address as an external IP: the agent refuses to
//!   start, naming the field.
//! - The same spec pushed as a reload to a running agent: refused (the log names the
//!   field), the old services stay, and pod0 → pod2:80 still reaches pod2, not pod1.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroplane_e2e::topology::Topology;
use ferroplane_e2e::{bin_dir, require_root, Netns};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The field the refusal must name, and what it must say.
const FIELD: &str = "services[0].spec.externalIPs[0]";

/// The topology's spec plus a ClusterIP service `web` (port 80 → pod1:8080); with
/// `external_ip`, the service also claims that address.
fn spec_with_service(topo: &Topology, external_ip: Option<Ipv4Addr>) -> String {
    let backend = topo.pods[1].ip;
    let ext = external_ip
        .map(|ip| format!("      externalIPs: [{ip}]\n"))
        .unwrap_or_default();
    format!(
        "{}serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\nservices:\n  - metadata: {{ name: web, namespace: default }}\n    spec:\n      type: ClusterIP\n      clusterIP: {CLUSTER_IP}\n{ext}      ports: [ {{ name: http, protocol: TCP, port: 80, targetPort: 8080 }} ]\nendpointSlices:\n  - metadata: {{ name: web-1, namespace: default, labels: {{ kubernetes.io/service-name: web }} }}\n    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: 8080 }} ]\n    endpoints:\n      - addresses: [{backend}]\n        conditions: {{ ready: true }}\n        nodeName: node-1\n",
        topo.spec_yaml()
    )
}

/// A TCP server in `ns` on `port` answering every line with `name`; stops on drop.
struct NameServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameServer {
    fn start(ns: &Netns, name: &'static str, port: u16) -> NameServer {
        let listener = ns
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .expect("netns")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let Ok(mut w) = s.try_clone() else { continue };
                        let mut line = String::new();
                        if BufReader::new(s).read_line(&mut line).is_ok() {
                            let _ = w.write_all(format!("{name}\n").as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        NameServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who answers `ip:port` from `ns` (the server's name), or why nobody did.
fn who_answers(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddrV4::new(ip, port).into(), Duration::from_secs(2))
                .map_err(|e| format!("connect {ip}:{port}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"who\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read from {ip}:{port}: {e}"))?;
        Ok(line.trim().to_string())
    })
    .map_err(|e| e.to_string())?
}

/// Retries [`who_answers`] for up to 10 s until it answers (the first packets of a fresh
/// topology may wait for neighbour resolution).
fn who_answers_soon(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match who_answers(ns, ip, port) {
            Ok(name) => return Ok(name),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn external_ip_hijacking_a_pod_is_refused() {
    if !require_root() {
        return;
    }
    let topo = Topology::single_node(3).expect("topology");
    let victim = topo.pods[2].ip;
    let hijack = spec_with_service(&topo, Some(victim));

    // At start: the agent refuses the spec, naming the field.
    topo.write_spec(&hijack).expect("spec");
    match topo.start_agent(&bin_dir()) {
        Ok(agent) => panic!(
            "the agent started with a service claiming pod2's address {victim}:\n{}",
            agent.log_tail(20)
        ),
        Err(e) => {
            // The whole log: the error's tail may be a backtrace.
            let log = std::fs::read_to_string(topo.dir().join("agent.log")).unwrap_or_default();
            let want = format!("{FIELD}: {victim} is the address of pod default/pod2");
            assert!(
                log.contains(&want),
                "{want:?} not in the agent's log:\n{log}\n{e}"
            );
        }
    }

    // Running with a good spec, then the hijack pushed as a reload.
    topo.write_spec(&spec_with_service(&topo, None))
        .expect("spec");
    let agent = topo.start_agent(&bin_dir()).expect("agent start");
    let _backend = NameServer::start(&topo.pods[1].ns, "pod1", 8080);
    let _victim = NameServer::start(&topo.pods[2].ns, "pod2", 80);
    let client = &topo.pods[0].ns;
    assert_eq!(
        who_answers_soon(client, victim, 80).as_deref(),
        Ok("pod2"),
        "pod0 -> pod2:80 before the reload\n{}",
        agent.log_tail(30)
    );
    assert_eq!(
        who_answers_soon(client, CLUSTER_IP, 80).as_deref(),
        Ok("pod1"),
        "the service works\n{}",
        agent.log_tail(30)
    );
    // A later mtime than the file the agent read, so its watcher sees a change.
    std::thread::sleep(Duration::from_millis(1100));
    topo.write_spec(&hijack).expect("spec");
    let start = Instant::now();
    let want =
        format!("spec file change rejected: {FIELD}: {victim} is the address of pod default/pod2");
    while !agent.log_tail(200).contains(&want) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{want:?} not logged within 10 s:\n{}",
            agent.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The attack: pod0 -> pod2:80 must still reach pod2, not the service's backend.
    for _ in 0..5 {
        assert_eq!(
            who_answers(client, victim, 80).as_deref(),
            Ok("pod2"),
            "pod0 -> pod2:80 after the hijacking reload\n{}",
            agent.log_tail(30)
        );
    }
    let services = agent.ctl(&["show", "services"]).expect("show services");
    assert!(
        !services.contains(&victim.to_string()),
        "the service claims {victim}:\n{services}"
    );
    assert_eq!(
        who_answers(client, CLUSTER_IP, 80).as_deref(),
        Ok("pod1"),
        "the old service keeps working"
    );
}
