//! What the watchers report (`ferroplane_agent::watch`, the Kubernetes source, BGP),
//! applied to the agent's state and published with what changed: kernel link events, the
//! spec file, the Kubernetes desired state (and the overlay it may rebuild), BGP's routes.

use std::sync::Arc;

use anyhow::{Context, Result};
use ferroplane_agent::reconcile::Changes;
use ferroplane_agent::watch::netlink::LinkEvent;
use tracing::{info, warn};

use super::agent::Agent;

impl Agent {
    /// Rebuilds the overlay after `cluster.nodes` changed (a Node joined or left): routes
    /// and tunnels for the new set (the kept peers' tunnels untouched), steering for new
    /// decapsulation ports, next hops resolved. The caller publishes.
    pub async fn apply_cluster(
        &mut self,
        view: &std::sync::RwLock<Arc<ferroplane_agent::overlay::Overlay>>,
    ) -> Result<()> {
        let next = Arc::new(
            ferroplane_agent::overlay::Overlay::from_spec_after(
                &self.state.spec,
                self.state.spec.cluster.as_ref(),
                Some(&self.state.overlay),
            )
            .context("rebuilding the overlay (cluster nodes changed)")?,
        );
        {
            let mut bpf = self.bpf()?;
            let (ipip, vxlan, wg) = next.decap_ports();
            let steer = ipip
                .then_some((4u8, 0u16))
                .into_iter()
                .chain(vxlan.map(|p| (17, p)))
                .chain(wg.map(|p| (17, p)));
            for (proto, port) in steer {
                bpf.add_tunnel4(proto, port)
                    .with_context(|| format!("tunnel4: protocol {proto} port {port}"))?;
            }
        }
        info!(
            routes = next.routes().len(),
            "cluster nodes changed: overlay rebuilt"
        );
        self.state.overlay = next.clone();
        match view.write() {
            Ok(mut v) => *v = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        for hop in self.state.uplink_next_hops() {
            if !self.state.neighbours.contains_key(&hop) {
                self.resolve(hop).await;
            }
        }
        Ok(())
    }

    /// The kernel's link events: a deleted link may be a pod's veth
    /// ([`Agent::vanish`]); neighbour changes on the uplink are read again. Drains what
    /// else is queued first, so a burst of neighbour changes reads the table once.
    pub async fn link_events(
        &mut self,
        first: LinkEvent,
        more: &mut tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
    ) {
        let mut neighbours = false;
        let mut next = Some(first);
        while let Some(ev) = next {
            match ev {
                LinkEvent::Deleted(ifindex) => self.vanish(ifindex),
                LinkEvent::Neighbour(ifindex) => {
                    neighbours |= ifindex == self.state.uplink.ifindex;
                }
            }
            next = more.try_recv().ok();
        }
        if neighbours {
            if let Err(e) = self.refresh_neighbours().await {
                warn!("{e:#}");
            }
        }
    }

    /// A new version of the standalone spec file: its network policies and services are
    /// applied (the rest needs a restart).
    pub fn spec_file_changed(
        &mut self,
        update: ferroplane_agent::watch::spec::SpecUpdate,
        bgp: Option<&ferroplane_agent::bgp::BgpRuntime>,
    ) {
        let new = match update {
            Ok(new) => new,
            Err(e) => {
                warn!("spec file change rejected: {e}");
                return;
            }
        };
        if ferroplane_agent::policy::take_policies(&mut self.state.spec, &new) {
            info!("spec file changed: network policies re-applied");
            if let Err(e) = self.publish(Changes::policy()) {
                warn!("applying network policies: {e:#}");
            }
        }
        if ferroplane_agent::services::take_services(&mut self.state.spec, new) {
            info!("spec file changed: services re-applied");
            if let Err(e) = self.publish(Changes::services()) {
                warn!("applying services: {e:#}");
            }
            if bgp.is_some_and(|b| b.sync_originated(&self.state.spec)) {
                info!("BGP: originated prefixes follow the services");
            }
        }
    }

    /// The Kubernetes watchers' desired state changed: the spec, the pods network policy
    /// selects and their hostPorts follow it. Returns whether the cluster's nodes changed.
    pub async fn k8s_changed(
        &mut self,
        desired: &ferroplane_agent::k8s::DesiredState,
        overlay_view: &std::sync::RwLock<Arc<ferroplane_agent::overlay::Overlay>>,
        bgp: Option<&ferroplane_agent::bgp::BgpRuntime>,
    ) -> bool {
        let mut next = self.state.spec.clone();
        desired.apply_to(&mut next);
        let mut changes = Changes::default();
        // hostPorts of this node's pods (runtimes that pass no portMappings).
        if desired.host_ports != self.state.k8s_host_ports {
            self.state.k8s_host_ports = desired.host_ports.clone();
            changes.merge(Changes::services());
        }
        // Pods (policy peers, labels of CNI-plumbed pods) for the policy compiler.
        let k8s_pods = desired.policy_pods(&next.node.name);
        if k8s_pods != self.state.k8s_pods {
            self.state.k8s_pods = k8s_pods;
            changes.merge(Changes::policy());
        }
        let mut spec_changed = false;
        let mut cluster_changed = false;
        if next != self.state.spec {
            match next.validate() {
                Ok(()) => {
                    cluster_changed = next.cluster != self.state.spec.cluster;
                    changes.merge(Changes::between(&self.state.spec, &next));
                    self.state.spec = next;
                    spec_changed = true;
                    if cluster_changed {
                        if let Err(e) = self.apply_cluster(overlay_view).await {
                            warn!("{e:#}");
                        }
                    }
                }
                Err(e) => warn!("desired state from Kubernetes rejected: {e}"),
            }
        }
        if !changes.is_empty() {
            if let Err(e) = self.publish(changes) {
                warn!("applying the Kubernetes desired state: {e:#}");
            }
        }
        if spec_changed && bgp.is_some_and(|b| b.sync_originated(&self.state.spec)) {
            info!("BGP: originated prefixes follow the services");
        }
        info!(
            services = desired.services.len(),
            endpoint_slices = desired.endpoint_slices.len(),
            remote_nodes = desired.remote_nodes.len(),
            pods = desired.policy.pods().len(),
            policies = desired.policy.policy_count(),
            "Kubernetes desired state"
        );
        cluster_changed
    }

    /// BGP's forwarding changes: learnt routes into the FIB (only those prefixes), their
    /// next hops resolved. Kernel routes follow in the BGP runtime.
    pub async fn bgp_changes(&mut self, b: &mut ferroplane_agent::bgp::BgpRuntime) {
        let changes = b.poll().await;
        if changes.is_empty() {
            return;
        }
        let prefixes: Vec<_> = changes.iter().map(|(p, _)| *p).collect();
        let hops = ferroplane_agent::bgp::apply_changes(&mut self.state.bgp_routes, changes);
        for h in hops
            .iter()
            .filter(|h| !self.state.neighbours.contains_key(h))
        {
            self.resolve(*h).await;
        }
        if let Err(e) = self.publish(Changes::routes(prefixes)) {
            warn!("BGP routes: {e:#}");
        }
    }
}
