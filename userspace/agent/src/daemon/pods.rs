//! Pods: plumbed and plugged (spec pods at start, CNI ADD), missing (namespace not there
//! yet, retried), vanished (their veth deleted by the kernel), removed (CNI DEL, GC); and
//! the CNI server's requests carried out on the same paths.

use anyhow::{Context, Result};
use ferroplane_agent::cni_server::{PlumbedPod, PodOp};
use ferroplane_agent::config::PodSpec;
use ferroplane_agent::netlink::POD_GATEWAY;
use ferroplane_agent::reconcile::Changes;
use ferroplane_agent::state::PodState;
use ferroplane_agent::timing::Phases;
use ferroplane_bpf::XdpProg;
use tracing::{info, warn};

use super::agent::Agent;

impl Agent {
    /// Plumbs and plugs a pod; returns where the time went.
    pub async fn add_pod(&mut self, pod: &PodSpec) -> Result<Phases> {
        let mtu = self.pod_mtu();
        let (link, port, mode, phases) = match self.adopt_spare(pod, mtu).await? {
            Some((link, port, mode)) => {
                let phases = link.phases.clone();
                (link, port, mode, phases)
            }
            None => {
                let link = self
                    .plumber
                    .create_pod(pod, mtu, POD_GATEWAY)
                    .await
                    .with_context(|| format!("plumbing pod {}", pod.key()))?;
                let mut phases = link.phases.clone();
                let (port, mode) = self.plug_timed(
                    &link.host_ifname,
                    link.host_ifindex,
                    XdpProg::Pod,
                    &mut phases,
                )?;
                (link, port, mode, phases)
            }
        };
        let sw_if = self.state.free_sw_if();
        self.state.pods.insert(
            pod.key(),
            PodState {
                key: pod.key(),
                ip: pod.ip,
                pod_mac: link.pod_mac,
                host_ifname: link.host_ifname.clone(),
                host_ifindex: link.host_ifindex,
                host_mac: link.host_mac,
                mtu: mtu as u16,
                sw_if,
                port: Some(port),
                xdp_mode: Some(mode),
                identity: None,
                host_ports: Vec::new(),
            },
        );
        info!(pod = %pod.key(), ip = %pod.ip, veth = %link.host_ifname, reused = link.reused, "pod plugged");
        ferroplane_agent::vanish::lock(&self.gone).remove(&pod.key());
        Ok(phases)
    }

    /// A spec pod whose network namespace does not exist: reported as missing (plumbed
    /// when the namespace appears, see [`Agent::retry_missing`]) instead of failing.
    pub fn missing_pod(&self, pod: &PodSpec) {
        warn!(pod = %pod.key(), netns = %pod.netns_path().display(), "pod network namespace missing: not plumbed (retried every 5 s)");
        ferroplane_agent::vanish::lock(&self.gone).insert(
            pod.key(),
            ferroplane_agent::vanish::GonePod {
                key: pod.key(),
                ip: pod.ip,
                host_ifname: ferroplane_agent::netlink::host_ifname(&pod.namespace, &pod.name),
                state: ferroplane_api::InterfaceState::Missing,
                since: std::time::SystemTime::now(),
                spec: Some(pod.clone()),
            },
        );
    }

    /// Plumbs the spec pods reported gone whose namespace exists (again).
    pub async fn retry_missing(&mut self) {
        let due: Vec<PodSpec> = ferroplane_agent::vanish::lock(&self.gone)
            .values()
            .filter_map(|g| g.spec.clone())
            .filter(|p| p.netns_path().exists())
            .collect();
        for pod in due {
            match self.add_pod(&pod).await {
                Ok(_) => {
                    info!(pod = %pod.key(), "pod network namespace appeared: pod plumbed");
                    if let Err(e) = self.publish(Changes::pods()) {
                        warn!("{e:#}");
                    }
                }
                Err(e) => warn!(pod = %pod.key(), "plumbing a pod whose namespace appeared: {e:#}"),
            }
        }
    }

    /// The kernel deleted link `ifindex`: if it was a pod's veth (its namespace was deleted
    /// without CNI DEL), the pod leaves the tables, its XDP and map entries go and its
    /// AF_XDP port is closed (its frames return to the pool); it is reported as vanished
    /// until CNI DEL or GC, which keep its address reserved until then.
    pub fn vanish(&mut self, ifindex: u32) {
        let Some(key) = self
            .state
            .pods
            .iter()
            .find(|(_, p)| p.host_ifindex == ifindex)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(p) = self.state.pods.remove(&key) else {
            return;
        };
        if let Err(e) = self.publish(Changes::pods()) {
            warn!(pod = %key, "{e:#}");
        }
        if let Ok(mut bpf) = self.bpf() {
            if let Some(port) = p.port {
                let _ = bpf.clear_xsk(u32::from(port));
            }
            let _ = bpf.remove_iface(p.host_ifindex);
            // The link is gone with its XDP program; this drops our record of it.
            let _ = bpf.detach(&p.host_ifname);
        }
        if let Some(port) = p.port {
            if let Err(e) = self.engine.close_port(port) {
                warn!(pod = %key, "closing the AF_XDP port of a vanished pod: {e}");
            }
        }
        warn!(pod = %key, ip = %p.ip, veth = %p.host_ifname, port = ?p.port, "pod interface vanished (its network namespace was deleted without CNI DEL): engine port closed, frames returned; the address stays reserved until CNI DEL or GC");
        let spec = self
            .state
            .spec
            .pods
            .iter()
            .find(|s| s.key() == key)
            .cloned();
        ferroplane_agent::vanish::lock(&self.gone).insert(
            key.clone(),
            ferroplane_agent::vanish::GonePod {
                key,
                ip: p.ip,
                host_ifname: p.host_ifname,
                state: ferroplane_api::InterfaceState::Vanished,
                since: std::time::SystemTime::now(),
                spec,
            },
        );
    }

    /// Tears a pod down (CNI DEL and GC): tables first, then XDP, then its AF_XDP port
    /// (closed by the engine while the veth pair is deleted), recording the phases.
    /// Returns whether anything was there.
    pub async fn remove_pod(&mut self, pod: &PodSpec, phases: &mut Phases) -> Result<bool> {
        let key = pod.key();
        let was_gone = ferroplane_agent::vanish::lock(&self.gone)
            .remove(&key)
            .is_some();
        let known = self.state.pods.remove(&key);
        if let Some(p) = &known {
            self.publish(Changes::pods())?;
            phases.mark("publish");
            {
                let mut bpf = self.bpf()?;
                if let Some(port) = p.port {
                    let _ = bpf.clear_xsk(u32::from(port));
                }
                let _ = bpf.remove_iface(p.host_ifindex);
                phases.mark("bpf_maps");
                if let Err(e) = bpf.detach(&p.host_ifname) {
                    warn!(pod = %key, "detaching XDP: {e}");
                }
                phases.mark("xdp_detach");
            }
            if let Some(port) = p.port {
                // The socket's close (an RCU grace period) overlaps the veth's deletion.
                self.engine
                    .close_port(port)
                    .with_context(|| format!("closing the AF_XDP port of {key}"))?;
                phases.mark("af_xdp");
            }
        }
        let deleted = self
            .plumber
            .delete_pod(pod)
            .await
            .with_context(|| format!("deleting the veth of {key}"))?;
        phases.mark("veth");
        if known.is_some() || deleted || was_gone {
            info!(pod = %key, "pod removed");
        }
        Ok(known.is_some() || deleted || was_gone)
    }

    /// Carries out a CNI server request (same add/remove path as the YAML spec's pods).
    pub async fn pod_op(&mut self, op: PodOp) {
        let plumbed = |s: &PodState| PlumbedPod {
            host_ifname: s.host_ifname.clone(),
            host_mac: s.host_mac,
            pod_mac: s.pod_mac,
            ip: s.ip,
            mtu: s.mtu,
            phases: Phases::default(),
        };
        match op {
            PodOp::Add {
                pod,
                identity,
                host_ports,
                reply,
            } => {
                // A repeated ADD of a plumbed attachment answers what is there.
                if let Some(p) = self.state.pods.get(&pod.key()).filter(|p| p.ip == pod.ip) {
                    let _ = reply.send(Ok(plumbed(p)));
                    return;
                }
                let added = self.add_pod(&pod).await.and_then(|mut phases| {
                    if let Some(p) = self.state.pods.get_mut(&pod.key()) {
                        p.identity = identity;
                        p.host_ports = host_ports;
                    }
                    phases.skip();
                    self.publish(Changes::pods())?;
                    phases.mark("publish");
                    Ok(phases)
                });
                let r = match added {
                    Ok(phases) => self
                        .state
                        .pods
                        .get(&pod.key())
                        .map(|p| PlumbedPod {
                            phases,
                            ..plumbed(p)
                        })
                        .ok_or_else(|| "pod vanished after plumbing".to_string()),
                    Err(e) => Err(format!("{e:#}")),
                };
                let _ = reply.send(r);
            }
            PodOp::Del { pod, reply } => {
                let mut phases = Phases::new();
                let r = self.remove_pod(&pod, &mut phases).await;
                info!(pod = %pod.key(), phases = %phases, "CNI DEL phases (ms)");
                let _ = reply.send(r.map_err(|e| format!("{e:#}")));
            }
            PodOp::Get { key, reply } => {
                let _ = reply.send(self.state.pods.get(&key).map(plumbed));
            }
            PodOp::Keys { reply } => {
                let _ = reply.send(self.state.pods.keys().cloned().collect());
            }
        }
    }
}
