//! The demo's service: a ClusterIP + NodePort in front of pods 1 and 2, reached from
//! pod 0 (ClusterIP) and from the router namespace (NodePort). Each backend is a small
//! server thread in its pod's namespace that answers with its name and the client
//! address it saw.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use ferroplane_e2e::Topology;

/// The service's cluster IP.
pub const CLUSTER_IP: &str = "10.96.0.10";
/// Its port.
pub const PORT: u16 = 80;
/// Its NodePort.
pub const NODE_PORT: u16 = 30080;
/// The port the backends listen on.
pub const TARGET_PORT: u16 = 8080;

/// The `services:` / `endpointSlices:` sections appended to the topology's spec.
pub fn spec(topo: &Topology) -> String {
    let mut y = format!(
        "serviceProxy:\n  clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]\nservices:\n  - metadata: {{ name: demo, namespace: default }}\n    spec:\n      type: NodePort\n      clusterIP: {CLUSTER_IP}\n      ports: [ {{ name: http, protocol: TCP, port: {PORT}, targetPort: http, nodePort: {NODE_PORT} }} ]\nendpointSlices:\n  - metadata: {{ name: demo-1, namespace: default, labels: {{ kubernetes.io/service-name: demo }} }}\n    addressType: IPv4\n    ports: [ {{ name: http, protocol: TCP, port: {TARGET_PORT} }} ]\n    endpoints:\n"
    );
    for pod in topo.pods.iter().skip(1) {
        y.push_str(&format!(
            "      - addresses: [{}]\n        conditions: {{ ready: true }}\n        nodeName: node-1\n        targetRef: {{ kind: Pod, namespace: default, name: {} }}\n",
            pod.ip, pod.name
        ));
    }
    y
}

/// Backend servers (one thread per pod), stopped on drop.
pub struct Backends {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backends {
    /// Start a server on [`TARGET_PORT`] in every pod but the first.
    pub fn start(topo: &Topology) -> Result<Backends> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for pod in topo.pods.iter().skip(1) {
            let path = pod.ns.path().to_path_buf();
            let (name, stop) = (pod.name.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
            threads.push(std::thread::spawn(move || {
                let listener = std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|()| {
                        TcpListener::bind(("0.0.0.0", TARGET_PORT)).map_err(|e| e.to_string())
                    })
                    .and_then(|l| {
                        l.set_nonblocking(true)
                            .map(|()| l)
                            .map_err(|e| e.to_string())
                    });
                let l = match listener {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            if let Ok(mut w) = s.try_clone() {
                                let mut line = String::new();
                                if BufReader::new(s).read_line(&mut line).is_ok() {
                                    let _ = w.write_all(format!("{name} saw {peer}\n").as_bytes());
                                }
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .context("backend server did not start")?
                .map_err(|e| anyhow::anyhow!("backend server in {}: {e}", pod.name))?;
        }
        Ok(Backends { stop, threads })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn ask(dst: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// The service checks: (name, outcome).
pub fn checks(topo: &Topology) -> Vec<(String, Result<String>)> {
    let vip: SocketAddr = SocketAddr::from(([10, 96, 0, 10], PORT));
    let np: SocketAddr = SocketAddr::from((Topology::NODE_IP, NODE_PORT));
    let p0 = &topo.pods[0];
    let run = |ns: &ferroplane_e2e::Netns, dst: SocketAddr| -> Result<String> {
        let answers = ns.run(move || {
            (0..4)
                .map(|_| ask(dst))
                .collect::<std::io::Result<Vec<_>>>()
        })??;
        Ok(answers.join("; "))
    };
    vec![
        (
            format!("service ClusterIP {CLUSTER_IP}:{PORT} from {}", p0.name),
            run(&p0.ns, vip),
        ),
        (
            format!(
                "service NodePort {}:{NODE_PORT} from router",
                Topology::NODE_IP
            ),
            run(&topo.router, np),
        ),
    ]
}
