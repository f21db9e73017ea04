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
    /// How many packets.
    #[arg(long, default_value_t = 100)]
    count: u32,
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
    })?;
    let file =
        File::create(&args.write).with_context(|| format!("creating {}", args.write.display()))?;
    let mut writer = PcapWriter::new(BufWriter::new(file)).context("writing the pcap header")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut written = 0u32;
    loop {
        let report: CaptureReport = client.call_typed(&Request::CaptureTake)?;
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
        if written < args.count {
            format!(
                " (timed out after {} s waiting for {})",
                args.timeout, args.count
            )
        } else {
            String::new()
        }
    ))
}
