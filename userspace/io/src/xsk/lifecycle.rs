//! Ports coming and going: installing opened sockets (consecutive ids for an
//! interface's queues), removing them in place, or closing them on the reaper thread
//! (see "Closing ports off the owner's thread" in the module docs of `xsk`).

use std::os::fd::RawFd;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::fill::{idle_fill, refill_port};
use super::port::Port;
use super::{OpenPort, Owner, Waker, XskIo};
use crate::{BufIdx, IoError, PortId};

/// The thread that closes ports' sockets for [`XskIo::close_port`].
pub(super) struct Reaper {
    jobs: Option<mpsc::Sender<(PortId, Port)>>,
    done: mpsc::Receiver<PortId>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    pub(super) fn start(waker: Waker) -> Result<Reaper, IoError> {
        let (jobs, rx) = mpsc::channel::<(PortId, Port)>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fp-xsk-reaper".into())
            .spawn(move || {
                for (id, port) in rx {
                    // Unbinds the socket: returns after the kernel's grace period, when
                    // nothing writes into the port's frames any more.
                    drop(port);
                    if done_tx.send(id).is_err() {
                        break;
                    }
                    waker.wake();
                }
            })
            .map_err(|source| IoError::Os {
                op: "spawn the AF_XDP reaper thread",
                source,
            })?;
        Ok(Reaper {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Close what is queued and wait for the thread.
    pub(super) fn finish(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl XskIo {
    /// Open an AF_XDP socket on `ifname` queue `queue_id`, sharing the UMEM, and fill its fill
    /// ring. Returns the port and the socket fd to put into the XSKMAP (the fd stays owned by this
    /// `XskIo`; it is closed by [`XskIo::remove_port`] or on drop, which also removes it from any
    /// XSKMAP). A removed port's id may be reused. The same as
    /// [`XskOpener::open`](super::XskOpener::open) followed by [`XskIo::install_port`], on this
    /// thread.
    pub fn add_port(&mut self, ifname: &str, queue_id: u32) -> Result<(PortId, RawFd), IoError> {
        let open = self.opener().open(ifname, queue_id)?;
        self.install_port(open)
    }

    /// Make a socket opened by [`XskOpener::open`](super::XskOpener::open) a port: it gets an id
    /// and its fill ring is filled. Cheap (no system call but the fill ring's wake-up); returns the
    /// port and its fd as [`XskIo::add_port`] does.
    pub fn install_port(&mut self, open: OpenPort) -> Result<(PortId, RawFd), IoError> {
        self.install_ports(vec![open])?
            .into_iter()
            .next()
            .ok_or_else(|| IoError::Config("no port installed".into()))
    }

    /// [`XskIo::install_port`] for the sockets of several RX queues of one interface: they
    /// get consecutive ids (the first free run long enough), in the order given, so that
    /// an XSKMAP laid out as `first id + rx queue` reaches each queue's socket. All or
    /// nothing: on error none is installed (and the sockets are closed).
    pub fn install_ports(&mut self, opens: Vec<OpenPort>) -> Result<Vec<(PortId, RawFd)>, IoError> {
        let n = opens.len();
        let first = (0..=self.ports.len())
            .find(|&i| (i..i + n).all(|i| PortId::try_from(i).is_ok_and(|id| self.port_free(id))))
            .unwrap_or(self.ports.len());
        self.place_ports(first, opens)
    }

    /// Whether port id `id` is free here: no port has it and none is being closed with it.
    pub fn port_free(&self, id: PortId) -> bool {
        self.ports.get(usize::from(id)).is_none_or(|p| p.is_none()) && !self.closing.contains(&id)
    }

    /// [`XskIo::install_ports`] at ids chosen by the caller: `first`, `first + 1`, ... (when
    /// several backends share one numbering of ports, e.g. one per engine worker, each port
    /// id also being its XSKMAP slot). Fails, installing none, if one of them is not
    /// [`XskIo::port_free`].
    pub fn install_ports_at(
        &mut self,
        first: PortId,
        opens: Vec<OpenPort>,
    ) -> Result<Vec<(PortId, RawFd)>, IoError> {
        let first = usize::from(first);
        if let Some(busy) = (first..first + opens.len())
            .find(|&i| !PortId::try_from(i).is_ok_and(|id| self.port_free(id)))
        {
            return Err(IoError::Config(format!("port id {busy} is taken")));
        }
        self.place_ports(first, opens)
    }

    /// Installs `opens` at ids `first..` (checked free by the caller).
    fn place_ports(
        &mut self,
        first: usize,
        opens: Vec<OpenPort>,
    ) -> Result<Vec<(PortId, RawFd)>, IoError> {
        for open in &opens {
            if open.umem != Arc::as_ptr(&self.umem) as usize {
                return Err(IoError::Config(format!(
                    "{} queue {} was opened on another UMEM",
                    open.port.ifname, open.port.queue_id
                )));
            }
        }
        let n = opens.len();
        if first + n > usize::from(PortId::MAX) + 1 {
            return Err(IoError::Config(format!("too many ports ({})", first + n)));
        }
        let mut out = Vec::with_capacity(n);
        for (slot, open) in (first..).zip(opens) {
            let id = slot as PortId;
            out.push((id, open.port.fd));
            if slot >= self.ports.len() {
                self.ports.resize_with(slot + 1, || None);
            }
            self.ports[slot] = Some(open.port);
        }
        self.update_port_cap();
        let fs = self.mem.frame_size as u64;
        let reserve = self.floor_reserve;
        for &(id, _) in &out {
            if let Some(Some(p)) = self.ports.get_mut(usize::from(id)) {
                p.stats.fill_target = idle_fill(&self.cfg, p.cap);
                refill_port(id, p, &mut self.owner, &mut self.free, fs, reserve);
            }
        }
        self.pollfds_stale = true;
        Ok(out)
    }

    /// Close the socket of `port` (for pod deletion). Every frame its rings
    /// held (fill, RX, TX, completion) returns to the pool; frames the
    /// caller received from it stay the caller's. Its fd is invalid after
    /// this and was removed from XSKMAPs by the kernel.
    pub fn remove_port(&mut self, port: PortId) -> Result<(), IoError> {
        let p = self.take_port(port)?;
        // Closing the last reference to the socket unbinds it synchronously
        // (the kernel waits for in-flight receive paths), so nothing writes
        // into its frames afterwards.
        drop(p);
        self.release(port);
        Ok(())
    }

    /// Like [`XskIo::remove_port`], but the socket is closed on a reaper thread, so this returns at
    /// once instead of after the kernel's grace period. Until the close is done, the port's id is
    /// not reused and the frames its rings held stay out of the pool; they come back at a later
    /// [`PacketIo::flush`](crate::PacketIo::flush) (or [`XskIo::reap_closed`]), after the reaper
    /// has woken [`PacketIo::wait`](crate::PacketIo::wait). The first call starts the reaper; if it
    /// cannot start, the port is closed here.
    pub fn close_port(&mut self, port: PortId) -> Result<(), IoError> {
        let p = self.take_port(port)?;
        if self.reaper.is_none() {
            match Reaper::start(self.waker()) {
                Ok(r) => self.reaper = Some(r),
                Err(_) => {
                    drop(p);
                    self.release(port);
                    return Ok(());
                }
            }
        }
        let sent = match self.reaper.as_ref().and_then(|r| r.jobs.as_ref()) {
            Some(jobs) => jobs.send((port, p)).map_err(|mpsc::SendError(job)| job),
            None => Err((port, p)),
        };
        match sent {
            Ok(()) => self.closing.push(port),
            // The reaper is gone (it only stops when its channel closes): close here.
            Err((_, p)) => {
                drop(p);
                self.release(port);
            }
        }
        Ok(())
    }

    /// Return the frames and ids of ports the reaper has closed since the last call;
    /// returns how many there were. [`PacketIo::flush`](crate::PacketIo::flush) calls this.
    pub fn reap_closed(&mut self) -> usize {
        let mut n = 0;
        while let Some(id) = self.reaper.as_ref().and_then(|r| r.done.try_recv().ok()) {
            self.closing.retain(|&c| c != id);
            self.closed += 1;
            self.release(id);
            n += 1;
        }
        n
    }

    /// Ports whose sockets the reaper is still closing.
    pub fn closing_ports(&self) -> usize {
        self.closing.len()
    }

    /// Ports the reaper has closed since this backend was created.
    pub fn closed_ports(&self) -> u64 {
        self.closed
    }

    fn take_port(&mut self, port: PortId) -> Result<Port, IoError> {
        let p = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::take)
            .ok_or_else(|| IoError::Config(format!("no port {port}")))?;
        self.pollfds_stale = true;
        self.update_port_cap();
        Ok(p)
    }

    /// Every frame the closed port `port`'s rings held goes back to the pool, and
    /// trailing unused ids are dropped.
    fn release(&mut self, port: PortId) {
        for (buf, owner) in self.owner.iter_mut().enumerate() {
            if matches!(*owner, Owner::Fill(q) | Owner::Tx(q) if q == port) {
                *owner = Owner::Free;
                self.free.push(buf as BufIdx);
            }
        }
        while self.ports.last().is_some_and(Option::is_none)
            && !self.closing.contains(&((self.ports.len() - 1) as PortId))
        {
            self.ports.pop();
        }
    }
}
