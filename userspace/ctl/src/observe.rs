//! `ferroctl trace ...`, `ferroctl show trace` and `ferroctl capture ...`.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferroplane_api::{CaptureReport, Client, Request, TracePacket};
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// `ferroctl trace ...`.
#[derive(Debug, Subcommand)]
pub enum TraceCmd {
    /// Trace the next N packets received (optionally on one interface, matching a filter).
    Add {
        /// Engine interface (kernel name, see `show interfaces`); any when absent.
        #[arg(long)]
        iface: Option<String>,
        /// How many packets.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Filter: `host A`, `src A`, `dst A`, `proto tcp|udp|icmp|N`, `port N`, joined by `and`.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Forget the trace records and stop tracing.
    Clear,
}

/// `ferroctl capture ...`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Capture what an interface receives and sends (kernel name).
    #[arg(long, conflicts_with = "node")]
    iface: Option<String>,
    /// Capture what enters a graph node (e.g. `error-drop` shows what was dropped).
    #[arg(long)]
    node: Option<String>,
    /// How many packets (the agent refuses more than 100000).
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// Stop once the frames taken would pass this many bytes (the agent's default is
    /// 16 MiB; it refuses more than 64 MiB). Together with --count, bounds the agent's memory.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Filter (as for `trace add`).
    #[arg(long)]
    filter: Option<String>,
    /// Give up waiting for packets after this many seconds (what was taken is written).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// pcap file to write (readable by tshark / Wireshark).
    #[arg(short = 'w', long = "write")]
    write: PathBuf,
}

/// Arm or clear the trace.
pub fn trace(client: &mut Client, cmd: &TraceCmd) -> Result<String> {
    match cmd {
        TraceCmd::Add {
            iface,
            count,
            filter,
        } => {
            client.call(&Request::TraceAdd {
                iface: iface.clone(),
                count: *count,
                filter: filter.clone(),
            })?;
            Ok(format!(
                "tracing the next {count} packet(s){}{}; see `ferroctl show trace`\n",
                iface
                    .as_ref()
                    .map(|i| format!(" on {i}"))
                    .unwrap_or_default(),
                filter
                    .as_ref()
                    .map(|f| format!(" matching `{f}`"))
                    .unwrap_or_default()
            ))
        }
        TraceCmd::Clear => {
            client.call(&Request::ClearTrace)?;
            Ok("trace cleared\n".into())
        }
    }
}

/// Human form of `show trace`: each packet, then its steps node by node.
pub fn render_trace(packets: &[TracePacket]) -> String {
    if packets.is_empty() {
        return "no traced packets (arm with `ferroctl trace add`)\n".into();
    }
    let mut out = String::new();
    for p in packets {
        out.push_str(&format!("Packet {}\n", p.id));
        let width = p.steps.iter().map(|s| s.node.len()).max().unwrap_or(0);
        for s in &p.steps {
            out.push_str(&format!("  {:<width$}  {}\n", s.node, s.text));
        }
        out.push('\n');
    }
    out
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("agent sent an odd-length hex packet");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("agent sent bad hex"))
        .collect()
}

/// Run a capture and write the pcap file.
pub fn capture(client: &mut Client, args: &CaptureArgs) -> Result<String> {
    if args.iface.is_none() && args.node.is_none() {
        bail!("capture needs --iface IF or --node NODE");
    }
    client.call(&Request::CaptureStart {
        iface: args.iface.clone(),
        node: args.node.clone(),
        count: args.count,
        filter: args.filter.clone(),
        max_bytes: args.max_bytes,
    })?;
    let file =
        File::create(&args.write).with_context(|| format!("creating {}", args.write.display()))?;
    let mut writer = PcapWriter::new(BufWriter::new(file)).context("writing the pcap header")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut written = 0u32;
    let mut ended;
    loop {
        let report: CaptureReport = client.call_typed(&Request::CaptureTake)?;
        ended = report.done;
        for p in &report.packets {
            let data = unhex(&p.hex)?;
            let ts = Duration::from_nanos(p.ts_ns);
            writer
                .write_packet(&PcapPacket::new(ts, data.len() as u32, &data))
                .context("writing a packet")?;
            written += 1;
        }
        if report.done || written >= args.count {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(writer);
    Ok(format!(
        "{written} packet(s) written to {}{}\n",
        args.write.display(),
        if written < args.count && ended {
            " (the capture reached its byte limit, --max-bytes)".to_string()
        } else if written < args.count {
            format!(
                " (timed out after {} s waiting for {})",
                args.timeout, args.count
            )
        } else {
            String::new()
        }
    ))
}

/// Human form of `show neighbors`.
pub fn render_neighbors(neighbors: &[ferroplane_api::NeighborInfo]) -> String {
    use crate::table::{Align, Table};
    if neighbors.is_empty() {
        return "no neighbours\n".into();
    }
    let mut t = Table::new(&[
        ("Address", Align::Left),
        ("MAC", Align::Left),
        ("Interface", Align::Left),
        ("State", Align::Left),
        ("Adj", Align::Right),
    ]);
    for n in neighbors {
        t.row([
            n.ip.clone(),
            n.mac.clone().unwrap_or_else(|| "-".into()),
            n.interface.clone(),
            n.state.clone(),
            n.adj.to_string(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbors_table_aligns_and_marks_unresolved() {
        let n = |ip: &str, mac: Option<&str>, state: &str| ferroplane_api::NeighborInfo {
            ip: ip.into(),
            mac: mac.map(Into::into),
            interface: "up0".into(),
            sw_if: 0,
            state: state.into(),
            adj: 2,
        };
        let text = render_neighbors(&[
            n("192.168.100.1", Some("02:00:00:00:00:01"), "resolved"),
            n("192.168.100.9", None, "incomplete"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("Address"), "{text}");
        assert!(lines[1].contains("02:00:00:00:00:01") && lines[1].contains("resolved"));
        assert!(
            lines[2].contains(" - ") && lines[2].contains("incomplete"),
            "{text}"
        );
        // Columns line up: the MAC column starts at the same offset on every line.
        let col = lines[0].find("MAC").unwrap();
        assert_eq!(lines[1].find("02:").unwrap(), col);
    }

    #[test]
    fn trace_shows_each_step_under_its_packet() {
        let p = TracePacket {
            id: 7,
            steps: vec![ferroplane_api::TraceStep {
                node: "ip4-policy".into(),
                text: "drop: ip4-policy: policy-denied-ingress".into(),
                fields: Default::default(),
            }],
        };
        let text = render_trace(&[p]);
        assert!(text.starts_with("Packet 7\n"), "{text}");
        assert!(text.contains("ip4-policy  drop: ip4-policy: policy-denied-ingress"));
    }
}
