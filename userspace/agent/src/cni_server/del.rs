//! CNI DEL and GC: tear down first, release after, so an address is never reused while it
//! is still configured.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ferroplane_cni::{AgentRequest, CniError, Command};
use tracing::info;

use super::handle::{agent_err, blocking, check_request_netns, op};
use super::{attachment_pod, record_pod, CniContext, PodOp, CNI_POD_NAMESPACE};
use crate::config::PodSpec;

/// CNI DEL: the pod torn down, then its address released.
pub(super) async fn del(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    check_request_netns(Command::Del, &req.netns)?;
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    let record = blocking(move || ipam.get(&cid, &ifname)).await?;
    let ip = record.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |r| r.ip);
    // Tear down first, release after: the address is never reused while still configured.
    let pod = attachment_pod(&req.container_id, &req.ifname, &req.netns, ip);
    op(ctx, |reply| PodOp::Del { pod, reply })
        .await?
        .map_err(|e| agent_err(format!("tearing down {}: {e}", req.container_id)))?;
    let ipam = ctx.ipam.clone();
    let (cid, ifname) = (req.container_id.clone(), req.ifname.clone());
    blocking(move || ipam.release(&cid, &ifname)).await?;
    Ok(())
}

/// CNI GC: attachments of this network not in `valid_attachments` torn down and released.
pub(super) async fn gc(ctx: &CniContext, req: AgentRequest) -> Result<(), CniError> {
    let keep: BTreeSet<(String, String)> = req
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    // Pods plumbed for this network but not valid any more (with or without a reservation).
    let ipam = ctx.ipam.clone();
    let records = blocking(move || ipam.records()).await?;
    let keys = op(ctx, |reply| PodOp::Keys { reply }).await?;
    let mut doomed: Vec<PodSpec> = records
        .iter()
        .filter(|r| {
            (r.container_id.is_empty() || r.network == req.network)
                && !keep.contains(&(r.container_id.clone(), r.ifname.clone()))
        })
        .filter(|r| !r.container_id.is_empty())
        .map(record_pod)
        .collect();
    let prefix = format!("{CNI_POD_NAMESPACE}/");
    for key in keys {
        let Some((cid, ifname)) = key.strip_prefix(&prefix).and_then(|k| k.split_once('/')) else {
            continue;
        };
        let owned_elsewhere = records
            .iter()
            .any(|r| r.key() == (cid, ifname) && r.network != req.network);
        if !owned_elsewhere
            && !keep.contains(&(cid.to_string(), ifname.to_string()))
            && !doomed.iter().any(|p| p.key() == key)
        {
            doomed.push(attachment_pod(cid, ifname, "", Ipv4Addr::UNSPECIFIED));
        }
    }
    for pod in doomed {
        let key = pod.key();
        if let Err(e) = op(ctx, |reply| PodOp::Del { pod, reply }).await? {
            return Err(agent_err(format!("GC: tearing down {key}: {e}")));
        }
    }
    let ipam = ctx.ipam.clone();
    let network = req.network.clone();
    let gone = blocking(move || ipam.gc(&network, &keep)).await?;
    if !gone.is_empty() {
        info!(network = %req.network, released = gone.len(), "CNI GC released addresses");
    }
    Ok(())
}
