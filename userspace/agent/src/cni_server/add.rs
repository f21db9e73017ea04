//! CNI ADD: the hostPorts checked against what the node has taken, the address reserved,
//! the pod plumbed by the main loop while the reservation goes to disk, the CNI result.

use ferroplane_cni::types::mac_string;
use ferroplane_cni::{
    code, AgentRequest, CniError, CniResult, Command, Interface, IpConfig, Route, CNI_VERSION,
};
use tracing::info;

use super::handle::{agent_err, blocking, check_request_netns, op};
use super::{record_host_ports, record_identity, record_pod, CniContext, PodOp};
use crate::ipam::Owner;
use crate::netlink::POD_GATEWAY;

/// The hostPorts of an ADD, checked against what the node has taken
/// ([`crate::hostports::Reserved::check`]); the other attachments' are checked when the
/// address is reserved.
fn add_host_ports(
    ctx: &CniContext,
    req: &AgentRequest,
) -> Result<Vec<crate::hostports::HostPort>, CniError> {
    if req.port_mappings.is_empty() {
        return Ok(Vec::new());
    }
    let reserved = match ctx.services.lock() {
        Ok(c) => c.host_ports.reserved.clone(),
        Err(p) => p.into_inner().host_ports.reserved.clone(),
    };
    let node = reserved.node_addr.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the agent has not built its service table yet; try again later",
        )
    })?;
    let ports = crate::hostports::from_request(&req.port_mappings, node)?;
    let identity = match (&req.pod_namespace, &req.pod_name) {
        (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
        _ => None,
    };
    reserved.check(
        &ports,
        identity.as_deref(),
        crate::hostports::ephemeral_range(),
    )?;
    Ok(ports)
}

/// CNI ADD: hostPorts checked, address reserved (and synced to disk while the main loop
/// plumbs the pod), the result the runtime gets.
pub(super) async fn add(ctx: &CniContext, req: AgentRequest) -> Result<CniResult, CniError> {
    check_request_netns(Command::Add, &req.netns)?;
    let host_ports = add_host_ports(ctx, &req)?;
    let owner = Owner {
        network: req.network.clone(),
        netns: req.netns.clone(),
        pod_namespace: req.pod_namespace.clone(),
        pod_name: req.pod_name.clone(),
        port_mappings: host_ports.iter().map(|h| h.to_mapping()).collect(),
    };
    let mappings = owner.port_mappings.clone();
    let mut phases = crate::timing::Phases::new();
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let (record, fresh) = blocking(move || ipam.reserve_unsynced(&cid, &ifname, &owner)).await?;
    phases.mark("ipam");
    if !fresh && record.netns != req.netns {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "container {} interface {} is already attached in {}, not {}",
                req.container_id, req.ifname, record.netns, req.netns
            ),
        ));
    }
    if !fresh && record.port_mappings != mappings {
        return Err(CniError::new(
            code::HOSTPORT_CONFLICT,
            format!(
                "container {} interface {} is already attached with other port mappings ({}); DEL it first",
                req.container_id,
                req.ifname,
                record
                    .port_mappings
                    .iter()
                    .map(crate::hostports::mapping_name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let pod = record_pod(&record);
    let identity = record_identity(&record);
    let host_ports = record_host_ports(&record);
    // The reservation goes to disk while the main loop plumbs the pod; the answer waits
    // for both.
    let ipam = ctx.ipam.clone();
    let ip = record.ip;
    let sync = async move {
        if fresh {
            blocking(move || ipam.sync(ip)).await?;
        }
        Ok::<_, CniError>(())
    };
    let plumb = async {
        let r = op(ctx, |reply| PodOp::Add {
            pod,
            identity,
            host_ports,
            reply,
        })
        .await;
        (r, phases.since_mark())
    };
    let ((plumbed, round_trip), synced) = tokio::join!(plumb, sync);
    let plumbed = plumbed?.map_err(|e| agent_err(format!("plumbing {}: {e}", req.container_id)))?;
    synced?;
    // Time in the main loop's queue: the round trip minus the plumbing itself.
    phases.push("queue", round_trip.saturating_sub(plumbed.phases.total()));
    phases.extend(&plumbed.phases);
    // Waiting for the disk after the plumbing was done (0 when the flush was quicker).
    let waited = phases.since_mark().saturating_sub(round_trip);
    phases.push("ipam_sync", waited);
    phases.skip();
    info!(container = %req.container_id, phases = %phases, "CNI ADD phases (ms)");
    Ok(CniResult {
        cni_version: CNI_VERSION.to_string(),
        interfaces: vec![
            Interface {
                name: plumbed.host_ifname,
                mac: mac_string(plumbed.host_mac),
                mtu: Some(u32::from(plumbed.mtu)),
                sandbox: None,
            },
            Interface {
                name: req.ifname.clone(),
                mac: mac_string(plumbed.pod_mac),
                mtu: Some(u32::from(plumbed.mtu)),
                sandbox: Some(req.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{}/32", record.ip),
            gateway: Some(POD_GATEWAY.to_string()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(POD_GATEWAY.to_string()),
        }],
        dns: req.dns,
    })
}
