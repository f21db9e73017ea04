//! `ferroctl`: inspect a running ferroplane agent through its local API
//! (like `vppctl` / `bpftool`).
//!
//! ```text
//! ferroctl [--socket PATH] [-o table|json] show interfaces|routes|counters|errors|xdp
//! ferroctl show routes ADDRESS|PREFIX   (the route used for it: longest prefix match)
//! ferroctl show bgp [routes [PREFIX]]
//! ferroctl show policies [--pod NS/NAME]
//! ferroctl clear counters
//! ferroctl version
//! ```

mod bgp;
mod bpfcmd;
mod observe;
mod policy;
mod render;
mod services;
mod table;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferroplane_api::{Client, Request, DEFAULT_SOCKET};
use serde::de::DeserializeOwned;

/// Command line of `ferroctl`.
#[derive(Debug, Parser)]
#[command(
    name = "ferroctl",
    version,
    about = "Inspect a running ferroplane agent",
    propagate_version = true
)]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "FERROPLANE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output format: aligned tables for humans or the API's JSON data.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns.
    Table,
    /// The response data as pretty-printed JSON.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show dataplane state.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Reset state.
    Clear {
        #[command(subcommand)]
        what: Clear,
    },
    /// Print the versions of ferroctl and of the agent.
    Version,
    /// Trace packets through the graph (`show trace` prints the paths).
    Trace {
        #[command(subcommand)]
        what: observe::TraceCmd,
    },
    /// Capture packets to a pcap file.
    Capture(observe::CaptureArgs),
    /// Pinned BPF maps (works without the agent).
    Map {
        #[command(subcommand)]
        what: bpfcmd::MapCmd,
    },
    /// Loaded XDP programs (works without the agent).
    Prog {
        #[command(subcommand)]
        what: bpfcmd::ProgCmd,
    },
}

#[derive(Debug, Subcommand)]
enum Show {
    /// Traced packets, node by node, with each node's decision.
    Trace,
    /// Interfaces known to the engine, with their counters.
    Interfaces,
    /// The engine's FIB; with an address or a prefix, only the route used for it
    /// (longest prefix match, like `ip route get`).
    Routes {
        /// An IPv4 address (10.244.1.7) or prefix (10.244.1.0/24).
        prefix: Option<String>,
    },
    /// The engine's neighbours (next hops): address, MAC, interface, state.
    Neighbors,
    /// The AF_XDP frame pool and each port's fill ring (like VPP `show buffers`).
    Buffers,
    /// Per-node runtime counters (like VPP `show runtime`).
    Counters,
    /// Per-node error counters (like VPP `show errors`).
    Errors {
        /// Also list counters that are zero.
        #[arg(long)]
        all: bool,
    },
    /// Counters of the XDP programs.
    Xdp {
        /// Also list drop reasons that are zero.
        #[arg(long)]
        all: bool,
    },
    /// Overlay peers: mode (direct, IPIP, VXLAN, WireGuard), state, handshake age, traffic.
    Tunnels,
    /// BGP peers: state, uptime, prefixes received/accepted/advertised.
    Bgp {
        #[command(subcommand)]
        what: Option<bgp::BgpShow>,
    },
    /// Services: frontends, backends with state and Maglev slots.
    Services,
    /// hostPorts: node ports translated to one pod (CNI portMappings, pods' hostPort).
    Hostports,
    /// Sessions (connection tracking / NAT), filtered.
    Sessions {
        /// Only sessions with this address in either tuple.
        #[arg(long)]
        addr: Option<String>,
        /// Only sessions with this port in either tuple.
        #[arg(long)]
        port: Option<u16>,
        /// Only this protocol (tcp, udp, icmp).
        #[arg(long)]
        proto: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// NetworkPolicy: each pod's compiled ACLs, the policies they came from, hit counts.
    Policies {
        /// Only this pod (NAMESPACE/NAME).
        #[arg(long)]
        pod: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Clear {
    /// Reset node, error and interface counters.
    Counters,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let request = match &cli.command {
        Command::Trace { what } => {
            let mut client = Client::connect(&cli.socket)?;
            return emit(&observe::trace(&mut client, what)?);
        }
        Command::Capture(args) => {
            let mut client = Client::connect(&cli.socket)?;
            return emit(&observe::capture(&mut client, args)?);
        }
        Command::Map { what } => return emit_local(cli, bpfcmd::map(what)?),
        Command::Prog { what } => return emit_local(cli, bpfcmd::prog(what)?),
        Command::Show { what } => match what {
            Show::Trace => Request::ShowTrace,
            Show::Interfaces => Request::ShowInterfaces,
            Show::Routes { .. } => Request::ShowRoutes,
            Show::Neighbors => Request::ShowNeighbors,
            Show::Buffers => Request::ShowBuffers,
            Show::Counters => Request::ShowCounters,
            Show::Errors { .. } => Request::ShowErrors,
            Show::Xdp { .. } => Request::ShowXdp,
            Show::Tunnels => Request::ShowTunnels,
            Show::Services => Request::ShowServices,
            Show::Hostports => Request::ShowHostPorts,
            Show::Sessions {
                addr,
                port,
                proto,
                limit,
            } => Request::ShowSessions {
                filter: ferroplane_api::SessionFilter {
                    addr: addr.clone(),
                    port: *port,
                    proto: proto.clone(),
                    limit: Some(*limit),
                },
            },
            Show::Bgp { what: None } => Request::ShowBgp,
            Show::Bgp { what: Some(_) } => Request::ShowBgpRoutes,
            Show::Policies { pod } => Request::ShowPolicies { pod: pod.clone() },
        },
        Command::Clear {
            what: Clear::Counters,
        } => Request::ClearCounters,
        Command::Version => Request::Version,
    };
    if request == Request::Version && cli.output == Output::Table {
        emit(&render::client_version())?;
    }

    let mut client = Client::connect(&cli.socket)?;
    let data = client.call(&request)?;
    let data = match &cli.command {
        Command::Show {
            what:
                Show::Bgp {
                    what: Some(bgp::BgpShow::Routes { prefix: Some(p) }),
                },
        } => bgp::filter_routes(data, p)?,
        Command::Show {
            what: Show::Routes { prefix: Some(p) },
        } => {
            let routes = decode::<Vec<ferroplane_api::RouteInfo>>(request.clone(), data)?;
            match render::lookup_route(routes, p)? {
                Some(r) => serde_json::to_value(vec![r]).context("formatting JSON")?,
                None => anyhow::bail!("no route for {p} in the engine's FIB"),
            }
        }
        _ => data,
    };
    if cli.output == Output::Json {
        let mut text = serde_json::to_string_pretty(&data).context("formatting JSON")?;
        text.push('\n');
        return emit(&text);
    }
    let text = match &cli.command {
        Command::Show { what } => match what {
            Show::Trace => observe::render_trace(&decode::<Vec<_>>(request, data)?),
            Show::Interfaces => render::interfaces(&decode::<Vec<_>>(request, data)?),
            Show::Routes { .. } => render::routes(&decode::<Vec<_>>(request, data)?),
            Show::Neighbors => observe::render_neighbors(&decode::<Vec<_>>(request, data)?),
            Show::Buffers => render::buffers(&decode(request, data)?),
            Show::Counters => render::counters(&decode(request, data)?),
            Show::Errors { all } => render::errors(&decode::<Vec<_>>(request, data)?, *all),
            Show::Xdp { all } => render::xdp(&decode(request, data)?, *all),
            Show::Tunnels => render::tunnels(&decode(request, data)?),
            Show::Services => services::services(&decode::<Vec<_>>(request, data)?),
            Show::Hostports => services::hostports(&decode::<Vec<_>>(request, data)?),
            Show::Sessions { .. } => services::sessions(&decode(request, data)?),
            Show::Bgp { what: None } => bgp::peers(&decode(request, data)?),
            Show::Bgp { what: Some(_) } => bgp::routes(&decode::<Vec<_>>(request, data)?),
            Show::Policies { .. } => policy::policies(&decode(request, data)?),
        },
        Command::Clear { .. } => "counters cleared\n".to_string(),
        Command::Version => render::agent_version(&decode(request, data)?),
        // Answered before the request was built.
        Command::Trace { .. }
        | Command::Capture(_)
        | Command::Map { .. }
        | Command::Prog { .. } => String::new(),
    };
    emit(&text)
}

/// Prints what a local (agent-less) command produced, as JSON or as its table.
fn emit_local(cli: &Cli, (data, text): (serde_json::Value, String)) -> Result<()> {
    if cli.output == Output::Json {
        let mut text = serde_json::to_string_pretty(&data).context("formatting JSON")?;
        text.push('\n');
        return emit(&text);
    }
    emit(&text)
}

/// Decodes the data of `request` into its typed form.
fn decode<T: DeserializeOwned>(request: Request, data: serde_json::Value) -> Result<T> {
    serde_json::from_value(data)
        .with_context(|| format!("unexpected data from the agent for {request}"))
}

/// Writes `text` to stdout; a closed pipe (`ferroctl ... | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
