//! The demo's NetworkPolicy: a namespace `secure` with one pod (`web`, a TCP server on
//! [`PORT`]) under a default-deny ingress policy plus one allow rule (from the first demo
//! pod only, on that port). The second demo pod's connection is refused (dropped by
//! `ip4-policy`, counted as `policy-denied-ingress`); the first pod's is allowed.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferroplane_e2e::{Netns, Topology};

/// Address of the `secure/web` pod.
pub const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 200);
/// Its server port.
pub const PORT: u16 = 8081;

/// The `secure/web` pod namespace and its server thread (stopped on drop).
pub struct Secure {
    /// The pod's namespace (plumbed by the agent from the spec).
    pub ns: Netns,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Secure {
    /// Create the namespace and start the server in it.
    pub fn start() -> Result<Secure> {
        let ns = Netns::new("web")?;
        let stop = Arc::new(AtomicBool::new(false));
        let path = ns.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                })
                .and_then(|()| TcpListener::bind(("0.0.0.0", PORT)).map_err(|e| e.to_string()))
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
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        if let Ok(mut w) = s.try_clone() {
                            let mut line = String::new();
                            if BufReader::new(s).read_line(&mut line).is_ok() {
                                let _ = w.write_all(format!("web saw {peer}\n").as_bytes());
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("secure/web server did not start")?
            .map_err(|e| anyhow::anyhow!("secure/web server: {e}"))?;
        Ok(Secure {
            ns,
            stop,
            thread: Some(thread),
        })
    }

    /// `yaml` (the topology's spec) with the `secure/web` pod added to `pods:`, and the
    /// `namespaces:` / `networkPolicies:` sections appended.
    pub fn spec(&self, topo: &Topology, yaml: &str) -> String {
        let pod = format!(
            "pods:\n  - {{name: web, namespace: secure, netns: {}, ip: {WEB_IP}, labels: {{app: web}}, ports: [{{name: http, containerPort: {PORT}}}]}}\n",
            self.ns.name()
        );
        let mut y = yaml.replacen("pods:\n", &pod, 1);
        let client = topo.pods[0].ip;
        let lines = [
            "namespaces:".to_string(),
            "  - metadata: {name: secure, labels: {tier: secure}}".to_string(),
            "networkPolicies:".to_string(),
            "  - apiVersion: networking.k8s.io/v1".to_string(),
            "    kind: NetworkPolicy".to_string(),
            "    metadata: {name: default-deny, namespace: secure}".to_string(),
            "    spec: {podSelector: {}, policyTypes: [Ingress]}".to_string(),
            "  - apiVersion: networking.k8s.io/v1".to_string(),
            "    kind: NetworkPolicy".to_string(),
            format!(
                "    metadata: {{name: allow-{}, namespace: secure}}",
                topo.pods[0].name
            ),
            "    spec:".to_string(),
            "      podSelector: {matchLabels: {app: web}}".to_string(),
            format!(
                "      ingress: [{{from: [{{ipBlock: {{cidr: {client}/32}}}}], ports: [{{port: http}}]}}]"
            ),
        ];
        for l in lines {
            y.push_str(&l);
            y.push('\n');
        }
        y
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ask(dst: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// The policy checks: (name, outcome).
pub fn checks(topo: &Topology) -> Vec<(String, Result<String>)> {
    let dst = SocketAddr::from((WEB_IP, PORT));
    let (p0, p1) = (&topo.pods[0], &topo.pods[1]);
    let allowed = p0.ns.run(move || ask(dst)).map_err(anyhow::Error::from);
    let refused = p1.ns.run(move || ask(dst)).map_err(anyhow::Error::from);
    vec![
        (
            format!(
                "policy: {} -> secure/web {dst} allowed (allow-{})",
                p0.name, p0.name
            ),
            allowed.and_then(|r| Ok(r?)),
        ),
        (
            format!(
                "policy: {} -> secure/web {dst} refused (default-deny)",
                p1.name
            ),
            refused.and_then(|r| match r {
                Ok(answer) => bail!("connected ({answer}): the policy did not apply"),
                Err(e) => Ok(format!(
                    "no connection ({e}): dropped as policy-denied-ingress"
                )),
            }),
        ),
    ]
}
