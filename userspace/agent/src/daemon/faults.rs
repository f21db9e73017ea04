//! Fault injection for the e2e suites (`--test-faults`, never in production): SIGUSR1
//! makes the engine worker stall (no heartbeat), SIGUSR2 makes it exit, so the suites can
//! see the watchdog and the health endpoints react.

use std::sync::Arc;

use anyhow::{Context, Result};
use ferroplane_engine::WorkerControl;
use tokio::signal::unix::{signal, SignalKind};
use tracing::warn;

/// Installs the SIGUSR1/SIGUSR2 handlers that inject faults into the worker of `control`.
pub fn install(control: Arc<WorkerControl>) -> Result<()> {
    warn!("--test-faults: SIGUSR1 stalls the engine worker, SIGUSR2 ends it (tests only)");
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    tokio::spawn(async move {
        use ferroplane_engine::worker::WorkerFault;
        loop {
            tokio::select! {
                Some(()) = usr1.recv() => {
                    warn!("test fault: engine worker stalls");
                    control.inject_fault(Some(WorkerFault::Stall));
                }
                Some(()) = usr2.recv() => {
                    warn!("test fault: engine worker exits");
                    control.inject_fault(Some(WorkerFault::Exit));
                }
                else => break,
            }
        }
    });
    Ok(())
}
