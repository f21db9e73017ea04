//! `cargo xtask bench forward`, the multi-queue rows (issue 15): the same 60-byte UDP flows
//! (router -> node -> pod0) through ferroplane (agent defaults, fast path off) with the
//! node's uplink a veth of
//! - 1 RX/TX queue (one AF_XDP socket), then
//! - 4 RX/TX queues (one AF_XDP socket per RX queue),
//!
//! each as Mpps delivered and CPU nanoseconds per delivered packet (measured as in
//! [`crate::bench_fastpath`]), the ratio 4-queue/1-queue, and the uplink's per-queue rx
//! counts from `ferroctl show interfaces` (every queue must have carried packets).
//!
//! On a veth the receiving RX queue is the sender's TX queue, picked per packet by the flow
//! hash: trafgen cycles the UDP source port over 1024..=2048, so its flows spread over the
//! four queues without further mapping.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Result};
use ferroplane_e2e::bench::{self, BenchTools, RunConfig};
use ferroplane_e2e::Topology;

use crate::bench_fastpath::{measure, Row};

/// `(queue, rx packets)` of every RX-queue socket of `ifname` in `show interfaces` JSON.
fn queue_rx(interfaces: &serde_json::Value, ifname: &str) -> Vec<(u64, u64)> {
    interfaces
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == ifname))
        .and_then(|i| i["queues"].as_array())
        .map(|qs| {
            qs.iter()
                .map(|q| {
                    (
                        q["queue"].as_u64().unwrap_or(0),
                        q["rx_packets"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The note under a row: the per-queue rx counts, and whether every queue carried packets.
fn queue_note(per_queue: &[(u64, u64)]) -> String {
    if per_queue.is_empty() {
        return "uplink per-queue rx: no queues in show interfaces".into();
    }
    let list: Vec<String> = per_queue
        .iter()
        .map(|(q, rx)| format!("q{q} {rx}"))
        .collect();
    let used = per_queue.iter().filter(|&&(_, rx)| rx > 0).count();
    let all = if used == per_queue.len() {
        "every queue used"
    } else {
        "NOT every queue used"
    };
    format!(
        "uplink rx per queue: {} ({used} of {} used: {all})",
        list.join(", "),
        per_queue.len()
    )
}

/// One row: an uplink of `queues` queues, the agent with its defaults.
fn queue_row(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    bin_dir: &Path,
    queues: u32,
    label: &'static str,
) -> Result<Row> {
    let pod = topo.pods.first().ok_or_else(|| anyhow!("no pod0"))?;
    topo.set_uplink_queues(queues)?;
    let (key, value) = ferroplane_e2e::topology::NODE_IP_FORWARD;
    topo.node.set_sysctl(key, value)?;
    let agent = topo.start_agent(bin_dir)?;
    let r = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        // The agent may reuse the pod's veth of the previous row, sink attached.
        let _ = pod
            .ns
            .ip(&["link", "set", "dev", Topology::POD_IF, "xdpdrv", "off"]);
        bench::attach_xdp_drop(&pod.ns, Topology::POD_IF, &tools.xdp_drop)?;
        measure(topo, tools, cfg, &pod.ns)
    })();
    let note = match agent.ctl_json(&["show", "interfaces"]) {
        Ok(v) => queue_note(&queue_rx(&v, Topology::UPLINK_IF)),
        Err(e) => format!("show interfaces failed: {e}"),
    };
    if r.is_err() {
        eprintln!("agent log (last 30 lines):\n{}", agent.log_tail(30));
    }
    agent.stop();
    let (pps, cpu_ns) = r?;
    Ok(Row {
        label,
        pps,
        cpu_ns,
        note,
    })
}

/// Measures the 1-queue and the 4-queue uplink rows and returns their table. Leaves the
/// uplink with 4 queues.
pub fn rows(
    topo: &Topology,
    tools: &BenchTools,
    cfg: &RunConfig,
    bin_dir: &Path,
) -> Result<String> {
    let one = queue_row(topo, tools, cfg, bin_dir, 1, "ferroplane, 1-queue uplink")?;
    let four = queue_row(topo, tools, cfg, bin_dir, 4, "ferroplane, 4-queue uplink")?;
    Ok(render(&one, &four))
}

fn render(one: &Row, four: &Row) -> String {
    let med = |v: &[f64]| bench::median(v);
    let mut out = crate::bench_fastpath::render_rows("uplink", 28, [one, four].into_iter());
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let _ = writeln!(
        out,
        "4-queue/1-queue: Mpps {:.2}x, CPU per packet {:.2}x",
        ratio(med(&four.pps), med(&one.pps)),
        ratio(med(&four.cpu_ns), med(&one.cpu_ns))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &'static str, pps: f64, ns: f64, note: String) -> Row {
        Row {
            label,
            pps: vec![pps, pps * 1.1, pps * 0.9],
            cpu_ns: vec![ns, ns, ns],
            note,
        }
    }

    #[test]
    fn table_has_both_rows_the_ratio_and_the_queues() {
        let one = row("ferroplane, 1-queue uplink", 0.4e6, 3000.0, String::new());
        let four_q = serde_json::json!([
            {"name": "eth9", "queues": []},
            {"name": "up0", "queues": [
                {"queue": 0, "rx_packets": 10},
                {"queue": 1, "rx_packets": 20},
                {"queue": 2, "rx_packets": 30},
                {"queue": 3, "rx_packets": 40}
            ]}
        ]);
        let note = queue_note(&queue_rx(&four_q, "up0"));
        let four = row("ferroplane, 4-queue uplink", 0.6e6, 2400.0, note);
        let t = render(&one, &four);
        assert!(t.contains("ferroplane, 1-queue uplink      0.400"), "{t}");
        assert!(t.contains("ferroplane, 4-queue uplink      0.600"), "{t}");
        assert!(t.contains("0.440/3000"), "{t}");
        assert!(t.contains("Mpps 1.50x, CPU per packet 0.80x"), "{t}");
        assert!(
            t.contains(
                "uplink rx per queue: q0 10, q1 20, q2 30, q3 40 (4 of 4 used: every queue used)"
            ),
            "{t}"
        );
    }

    #[test]
    fn idle_or_missing_queues_are_said() {
        let v = serde_json::json!([{"name": "up0", "queues": [
            {"queue": 0, "rx_packets": 5}, {"queue": 1, "rx_packets": 0}
        ]}]);
        assert!(queue_note(&queue_rx(&v, "up0")).contains("1 of 2 used: NOT every queue used"));
        assert!(queue_note(&queue_rx(&v, "up1")).contains("no queues"));
    }
}
