//! `ferroctl`: inspect a running ferroplane agent through its local API
//! (like `vppctl` / `bpftool`).
//!
//! ```text
//! ferroctl [--socket PATH] [-o table|json] show interfaces|routes|counters|errors|xdp
//! ferroctl clear counters
//! ferroctl version
//! ```

mod render;
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
}

#[derive(Debug, Subcommand)]
enum Show {
    /// Interfaces known to the engine, with their counters.
    Interfaces,
    /// The engine's FIB.
    Routes,
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
        Command::Show { what } => match what {
            Show::Interfaces => Request::ShowInterfaces,
            Show::Routes => Request::ShowRoutes,
            Show::Counters => Request::ShowCounters,
            Show::Errors { .. } => Request::ShowErrors,
            Show::Xdp { .. } => Request::ShowXdp,
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
    if cli.output == Output::Json {
        let mut text = serde_json::to_string_pretty(&data).context("formatting JSON")?;
        text.push('\n');
        return emit(&text);
    }
    let text = match &cli.command {
        Command::Show { what } => match what {
            Show::Interfaces => render::interfaces(&decode::<Vec<_>>(request, data)?),
            Show::Routes => render::routes(&decode::<Vec<_>>(request, data)?),
            Show::Counters => render::counters(&decode(request, data)?),
            Show::Errors { all } => render::errors(&decode::<Vec<_>>(request, data)?, *all),
            Show::Xdp { all } => render::xdp(&decode(request, data)?, *all),
        },
        Command::Clear { .. } => "counters cleared\n".to_string(),
        Command::Version => render::agent_version(&decode(request, data)?),
    };
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
