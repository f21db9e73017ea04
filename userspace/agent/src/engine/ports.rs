//! Which worker owns which AF_XDP port, and the commands that reach the workers.
//!
//! Port ids are global: the same number in every worker's backend, and the port's XSKMAP
//! slot (the XDP programs redirect a pod veth to its slot, an uplink queue `q` to
//! `first + q`). Each worker has its own [`XskIo`] (its own UMEM and frame pool): a
//! socket's rings have one producer and one consumer, so only the worker that installed
//! a port receives and transmits on it ([`PortOwners`]). An uplink's RX queue `q` goes to
//! worker `q mod N`; a pod's port to the worker owning the fewest ports.
//!
//! Commands run on one worker between its vectors: the commands about a port on its
//! owner; the queries about every worker ([`PortOpener::exec_each`]) on each in turn, so
//! a command never stalls every worker at once.

use std::os::fd::RawFd;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferroplane_engine::handoff::PortOwners;
use ferroplane_engine::worker::Command;
use ferroplane_io::{IoError, OpenPort, PortId, XskIo, XskOpener};

use super::backend::{EngineIo, EngineXsk};
use super::EngineError;

/// How long a caller waits for a worker to run a command.
pub(super) const ANSWER: Duration = Duration::from_secs(5);

/// Shares of the AF_XDP frame pool each uplink queue's port gets, a pod's port getting one
/// ([`XskIo::set_port_weight`]): the uplink carries every pod's traffic with the outside, so
/// its fill rings must not shrink to a pod's share as pods are added (with the default
/// 32768 frames and 50 pods, a one-queue uplink keeps a 1,564-frame fill ring).
pub const UPLINK_QUEUE_WEIGHT: u32 = 4;

/// What reaches one worker from other threads.
pub(super) struct WorkerLine {
    /// Commands run between its vectors.
    pub commands: Sender<Command<EngineIo>>,
    /// Ends its wait.
    pub waker: ferroplane_io::Waker,
    /// Opens sockets on its UMEM on the caller's thread.
    pub xsk: XskOpener,
}

/// The owner of each global port id in use.
#[derive(Debug, Default)]
struct PortTable {
    owner: Vec<Option<usize>>,
}

impl PortTable {
    fn is_free(&self, id: usize) -> bool {
        self.owner.get(id).is_none_or(Option::is_none)
    }

    fn set(&mut self, id: PortId, owner: Option<usize>) {
        let i = usize::from(id);
        if self.owner.len() <= i {
            self.owner.resize(i + 1, None);
        }
        self.owner[i] = owner;
        while self.owner.last().is_some_and(Option::is_none) {
            self.owner.pop();
        }
    }

    fn owner(&self, id: PortId) -> Option<usize> {
        self.owner.get(usize::from(id)).copied().flatten()
    }

    /// Ports each of `workers` owns.
    fn loads(&self, workers: usize) -> Vec<usize> {
        let mut n = vec![0; workers];
        for w in self.owner.iter().flatten() {
            if let Some(c) = n.get_mut(*w) {
                *c += 1;
            }
        }
        n
    }

    /// The first run of `n` ids free here and for which `ok` holds (`ok`: free in the
    /// installing worker's backend, which keeps ids of ports it is still closing).
    fn first_free_run(&self, n: usize, ok: impl Fn(PortId) -> bool) -> Option<PortId> {
        let limit = usize::from(PortId::MAX) + 1;
        (0..=limit.saturating_sub(n)).find_map(|first| {
            (first..first + n)
                .all(|i| self.is_free(i) && PortId::try_from(i).is_ok_and(&ok))
                .then(|| PortId::try_from(first).ok())
                .flatten()
        })
    }
}

struct Inner {
    workers: Vec<WorkerLine>,
    owners: Arc<PortOwners>,
    table: Mutex<PortTable>,
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, PortTable> {
        match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        }
    }
}

/// Runs commands (opening and closing AF_XDP ports, queries) on the workers from any
/// thread (see [`super::Engine::port_opener`]).
#[derive(Clone)]
pub struct PortOpener {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PortOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortOpener")
            .field("workers", &self.inner.workers.len())
            .finish_non_exhaustive()
    }
}

impl PortOpener {
    pub(super) fn new(workers: Vec<WorkerLine>, owners: Arc<PortOwners>) -> PortOpener {
        PortOpener {
            inner: Arc::new(Inner {
                workers,
                owners,
                table: Mutex::new(PortTable::default()),
            }),
        }
    }

    /// Engine workers.
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// Ports each worker owns (index order).
    pub fn ports_per_worker(&self) -> Vec<usize> {
        self.inner.table().loads(self.workers())
    }

    /// The worker owning `port`, if it is open.
    pub fn owner_of(&self, port: PortId) -> Option<usize> {
        self.inner.table().owner(port)
    }

    /// Runs `f` on worker 0 with its backend (waking it if it sleeps) and waits for the
    /// result.
    pub fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut XskIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.exec_on(0, f)
    }

    /// Runs `f` on worker `worker` and waits for the result.
    pub fn exec_on<T: Send + 'static>(
        &self,
        worker: usize,
        f: impl FnOnce(&mut XskIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send(worker, move |io| {
            let _ = tx.send(f(io));
        })?;
        rx.recv_timeout(ANSWER)
            .map_err(|_| EngineError::Timeout(ANSWER))
    }

    /// Runs `f` on every worker, one after the other (each waits for the previous one's
    /// answer, so at most one worker is in the command at a time); `f` gets the worker's
    /// index. One result per worker.
    pub fn exec_each<T: Send + 'static>(
        &self,
        f: impl Fn(usize, &mut XskIo) -> T + Send + Sync + 'static,
    ) -> Vec<Result<T, EngineError>> {
        let f = Arc::new(f);
        (0..self.workers())
            .map(|w| {
                let f = f.clone();
                self.exec_on(w, move |io| f(w, io))
            })
            .collect()
    }

    /// Queues `f` for worker `worker` and wakes it, without waiting.
    fn send(
        &self,
        worker: usize,
        f: impl FnOnce(&mut XskIo) + Send + 'static,
    ) -> Result<(), EngineError> {
        self.send_backend(worker, move |io: &mut EngineIo| f(io.xsk()))
    }

    /// Queues `f` for worker `worker` with its whole backend and wakes it, without waiting.
    fn send_backend(
        &self,
        worker: usize,
        f: impl FnOnce(&mut EngineIo) + Send + 'static,
    ) -> Result<(), EngineError> {
        let line = self.inner.workers.get(worker).ok_or(EngineError::Gone)?;
        line.commands
            .send(Box::new(f))
            .map_err(|_| EngineError::Gone)?;
        line.waker.wake();
        Ok(())
    }

    /// Runs `f` on worker `worker` with its whole backend ([`EngineIo`]: e.g. to attach a
    /// DPDK uplink) and waits for the result.
    pub fn exec_backend<T: Send + 'static>(
        &self,
        worker: usize,
        f: impl FnOnce(&mut EngineIo) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send_backend(worker, move |io| {
            let _ = tx.send(f(io));
        })?;
        rx.recv_timeout(ANSWER)
            .map_err(|_| EngineError::Timeout(ANSWER))
    }

    /// Reserves the first run of `n` port ids free everywhere for worker `worker` (ports of
    /// its backend that are not AF_XDP sockets, e.g. a DPDK uplink's): no socket gets them.
    pub fn reserve_ports(&self, n: usize, worker: usize) -> Result<PortId, EngineError> {
        let mut table = self.inner.table();
        let first = table
            .first_free_run(n, |_| true)
            .ok_or_else(|| IoError::Config(format!("no {n} free port ids")))?;
        for i in 0..n {
            let id = PortId::try_from(usize::from(first) + i)
                .map_err(|_| IoError::Config(format!("port id {first} + {i} out of range")))?;
            table.set(id, Some(worker));
            self.inner.owners.set(id, Some(worker));
        }
        Ok(first)
    }

    /// The worker owning the fewest ports (the lowest index among equals).
    fn least_loaded(&self) -> usize {
        let loads = self.inner.table().loads(self.workers());
        (0..loads.len()).min_by_key(|&w| loads[w]).unwrap_or(0)
    }

    /// Installs `opens` on `worker` (run on that worker): at `first` when given (ids
    /// reserved by the caller), else at the first run of ids free everywhere. Sets the
    /// owners before the sockets can receive.
    fn install(
        inner: &Inner,
        worker: usize,
        io: &mut XskIo,
        opens: Vec<OpenPort>,
        first: Option<PortId>,
    ) -> Result<Vec<(PortId, RawFd)>, IoError> {
        let n = opens.len();
        let mut table = inner.table();
        let first = match first {
            Some(f) => f,
            None => table
                .first_free_run(n, |id| io.port_free(id))
                .ok_or_else(|| IoError::Config(format!("no {n} free port ids")))?,
        };
        let ids: Vec<PortId> = (0..n)
            .map(|i| {
                PortId::try_from(usize::from(first) + i)
                    .map_err(|_| IoError::Config(format!("port id {first} + {i} out of range")))
            })
            .collect::<Result<_, _>>()?;
        for &id in &ids {
            table.set(id, Some(worker));
            inner.owners.set(id, Some(worker));
        }
        match io.install_ports_at(first, opens) {
            Ok(ports) => Ok(ports),
            Err(e) => {
                for &id in &ids {
                    table.set(id, None);
                    inner.owners.set(id, None);
                }
                Err(e)
            }
        }
    }

    /// [`super::Engine::add_port`]: the socket is created, given its rings and bound on the
    /// calling thread, on the UMEM of the worker owning the fewest ports (the kernel takes
    /// milliseconds, proportional to the UMEM's size); the worker only installs the ready
    /// port (fills its fill ring), so it keeps forwarding meanwhile.
    pub fn add_port(&self, ifname: &str) -> Result<(PortId, RawFd), EngineError> {
        let w = self.least_loaded();
        let line = self.inner.workers.get(w).ok_or(EngineError::Gone)?;
        let open = line.xsk.open(ifname, 0)?;
        let inner = self.inner.clone();
        let ports = self.exec_on(w, move |io| Self::install(&inner, w, io, vec![open], None))??;
        ports
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Io(IoError::Config("no port installed".into())))
    }

    /// [`super::Engine::add_ports`]: one socket per RX queue `0..queues` of `ifname`, with
    /// consecutive ids (queue `q` is port `first + q`); queue `q` belongs to worker
    /// `q mod N`, which opens and installs it on its thread (used for the uplink at start,
    /// before it forwards anything). Each queue's port gets [`UPLINK_QUEUE_WEIGHT`] shares
    /// of its worker's frame pool. All or nothing.
    pub fn add_ports(
        &self,
        ifname: &str,
        queues: u32,
    ) -> Result<Vec<(PortId, RawFd)>, EngineError> {
        let n = self.workers();
        let q = queues as usize;
        let first = {
            let mut table = self.inner.table();
            let first = table
                .first_free_run(q, |_| true)
                .ok_or_else(|| IoError::Config(format!("no {q} free port ids")))?;
            // Reserved (as worker 0's) until each worker installs its queues.
            for i in 0..q {
                if let Ok(id) = PortId::try_from(usize::from(first) + i) {
                    table.set(id, Some(0));
                }
            }
            first
        };
        let mut out: Vec<(PortId, RawFd)> = Vec::with_capacity(q);
        let mut result = Ok(());
        for w in 0..n.min(q.max(1)) {
            // This worker's queues: w, w + n, ... Installed one id at a time unless the
            // worker has them all (one worker: one consecutive run, as before).
            let mine: Vec<u32> = (0..queues).filter(|qq| *qq as usize % n == w).collect();
            let name = ifname.to_string();
            let inner = self.inner.clone();
            let r = self.exec_on(w, move |io| {
                let opener = io.opener();
                let mut got = Vec::new();
                for chunk in runs(&mine) {
                    let opens = chunk
                        .iter()
                        .map(|&qq| opener.open(&name, qq))
                        .collect::<Result<Vec<_>, _>>()?;
                    let at = PortId::try_from(usize::from(first) + chunk[0] as usize)
                        .map_err(|_| IoError::Config("port id out of range".into()))?;
                    let ports = Self::install(&inner, w, io, opens, Some(at))?;
                    for &(port, _) in &ports {
                        io.set_port_weight(port, UPLINK_QUEUE_WEIGHT)?;
                    }
                    got.extend(ports);
                }
                Ok::<_, IoError>(got)
            });
            match r {
                Ok(Ok(ports)) => out.extend(ports),
                Ok(Err(e)) => {
                    result = Err(EngineError::Io(e));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for &(port, _) in &out {
                let _ = self.remove_port(port);
            }
            let mut table = self.inner.table();
            for i in 0..q {
                if let Ok(id) = PortId::try_from(usize::from(first) + i) {
                    table.set(id, None);
                    self.inner.owners.set(id, None);
                }
            }
            return Err(e);
        }
        out.sort_by_key(|&(port, _)| port);
        Ok(out)
    }

    /// [`super::Engine::remove_port`] from any thread.
    pub fn remove_port(&self, port: PortId) -> Result<(), EngineError> {
        let w = self.owner_of(port).unwrap_or(0);
        let inner = self.inner.clone();
        self.exec_on(w, move |io| {
            let r = io.remove_port(port);
            inner.table().set(port, None);
            inner.owners.set(port, None);
            r
        })??;
        Ok(())
    }

    /// [`super::Engine::close_port`] from any thread.
    pub fn close_port(&self, port: PortId) -> Result<(), EngineError> {
        let w = self.owner_of(port).unwrap_or(0);
        let inner = self.inner.clone();
        self.send(w, move |io| {
            if let Err(e) = io.close_port(port) {
                tracing::warn!(port, "closing AF_XDP port: {e}");
            }
            // Other workers may take the id at once; this one not before the reaper
            // closed the socket (its backend keeps the id meanwhile).
            inner.table().set(port, None);
            inner.owners.set(port, None);
        })
    }

    /// Wakes every worker (e.g. to see a stop).
    pub(super) fn wake_all(&self) {
        for l in &self.inner.workers {
            l.waker.wake();
        }
    }
}

/// `queues` (ascending) cut into runs of consecutive numbers.
fn runs(queues: &[u32]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for &q in queues {
        match out.last_mut() {
            Some(r) if r.last().is_some_and(|&l| l + 1 == q) => r.push(q),
            _ => out.push(vec![q]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_runs() {
        assert_eq!(runs(&[0, 1, 2, 3]), vec![vec![0, 1, 2, 3]]);
        assert_eq!(runs(&[0, 2, 4]), vec![vec![0], vec![2], vec![4]]);
        assert_eq!(runs(&[1, 2, 5]), vec![vec![1, 2], vec![5]]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn port_table_runs_and_loads() {
        let mut t = PortTable::default();
        assert_eq!(t.first_free_run(4, |_| true), Some(0));
        for id in 0..4 {
            t.set(id, Some(id as usize % 2));
        }
        t.set(5, Some(1));
        assert_eq!(t.loads(3), vec![2, 3, 0]);
        // Id 4 alone is free; a run of two starts after 5.
        assert_eq!(t.first_free_run(1, |_| true), Some(4));
        assert_eq!(t.first_free_run(2, |_| true), Some(6));
        // The installing worker still closes id 4: skipped.
        assert_eq!(t.first_free_run(1, |id| id != 4), Some(6));
        t.set(5, None);
        assert_eq!(t.owner(5), None);
        assert_eq!(t.owner(3), Some(1));
        // Trailing free ids are dropped.
        assert_eq!(t.owner.len(), 4);
    }
}
