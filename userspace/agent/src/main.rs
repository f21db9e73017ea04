//! `ferroplane-agent`: the node daemon. This file is the table of contents of its life;
//! each step lives in `daemon/` (the library, `ferroplane_agent`, holds what they drive):
//! 1. the command line (`daemon::args`) and logging;
//! 2. the node spec: the YAML file (standalone) or the API server (`--k8s`)
//!    (`daemon::start::node_spec`);
//! 3. the dataplane up and the node programmed: XDP programs, punt TUN, engine, steering,
//!    uplink, the spec's pods (`daemon::start::agent`);
//! 4. what serves the node: host services, BGP, the API, metrics, the watchdog, health, the
//!    CNI server, the Kubernetes watchers (`daemon::serve`);
//! 5. the event loop until SIGTERM/SIGINT (`daemon::event_loop`, handlers in
//!    `daemon::{events, pods}`);
//! 6. the clean stop, `--on-exit detach|keep` (`daemon::stop`).

use anyhow::{Context, Result};
use clap::Parser;
use daemon::args::Args;
use daemon::{event_loop, serve, start, stop};
use tracing::{info, warn};

mod daemon;

fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // Descriptors for the listeners' connection limits (ferroplane_agent::listen) and more.
    match ferroplane_agent::listen::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "open file limit"),
        Err(e) => warn!("raising RLIMIT_NOFILE to its hard limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

/// The agent's life, from the node spec to the clean stop.
async fn run(args: Args) -> Result<()> {
    let node = start::node_spec(&args).await?;
    let mut agent = start::agent(&args, &node.spec).await?;
    let mut serving = serve::start(&args, &mut agent, &node).await?;
    event_loop::run(&args, &mut agent, &mut serving, node.updates).await?;
    stop::stop(agent, serving, args.on_exit == "keep").await
}
