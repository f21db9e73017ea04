//! Crash-safe pod address management for one node pool (the node's pod CIDR).
//!
//! Each reservation is one file `<dir>/<ip>` holding its [`Record`] (JSON). A reservation is
//! made by writing the record to a temporary file and `link()`ing it to its final name,
//! which fails atomically if the address is taken; then the file and the directory are
//! `fsync`ed ([`Ipam::sync`]; the CNI ADD plumbs the pod meanwhile and answers only after
//! it). So an address is on disk before it is handed out, a `kill -9` at any point
//! leaves either no reservation or a complete one (stray temporary files are removed at
//! open), and no address is ever handed out twice, even across restarts. Reservations are
//! keyed by (container id, interface name): asking again for the same key returns the same
//! address. Released on CNI DEL (by key) and GC (everything of a network not in the
//! runtime's valid list).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::spec::Ipv4NetExt;

/// Name of the file remembering the last address handed out (round-robin start point).
const LAST_FILE: &str = "last_reserved";
/// Prefix of temporary files.
const TMP_PREFIX: &str = ".tmp-";

/// IPAM errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the pool is reserved.
    #[error("no free address in pod CIDR {pool}: all {usable} usable addresses are reserved")]
    Exhausted {
        /// The pool.
        pool: Ipv4Net,
        /// Its number of usable addresses.
        usable: u64,
    },
    /// The store could not be read or written.
    #[error("IPAM store {}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The pool cannot hold pod addresses.
    #[error("pod CIDR {0} has no usable address")]
    BadPool(Ipv4Net),
    /// The store's lock was poisoned by a panic.
    #[error("IPAM lock poisoned")]
    Poisoned,
    /// A hostPort of the request is another attachment's (nothing was reserved).
    #[error("hostPort {port} is already mapped to {owner}")]
    HostPortConflict {
        /// The port (`8080/tcp`, with its address when it has one).
        port: String,
        /// Who has it: the attachment (and its Kubernetes pod, when known).
        owner: String,
    },
}

type Result<T, E = IpamError> = std::result::Result<T, E>;

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The address.
    pub ip: Ipv4Addr,
    /// Container id (`CNI_CONTAINERID`); empty for a record that could not be read.
    pub container_id: String,
    /// Interface name in the container (`CNI_IFNAME`).
    pub ifname: String,
    /// CNI network name (GC works per network).
    #[serde(default)]
    pub network: String,
    /// The container's network namespace path, when known.
    #[serde(default)]
    pub netns: String,
    /// Kubernetes pod namespace, when the runtime said.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Kubernetes pod name, when the runtime said.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// hostPorts of the attachment (the runtime's `portMappings`, validated), kept with
    /// its address so they are re-created after a restart and released with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<ferroplane_cni::PortMapping>,
}

impl Record {
    /// The (container id, ifname) key.
    pub fn key(&self) -> (&str, &str) {
        (&self.container_id, &self.ifname)
    }
}

/// What a reservation request carries besides its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// CNI network name.
    pub network: String,
    /// Netns path.
    pub netns: String,
    /// Pod namespace.
    pub pod_namespace: Option<String>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// hostPorts: refused (nothing reserved) when another attachment has one of them.
    pub port_mappings: Vec<ferroplane_cni::PortMapping>,
}

#[derive(Debug, Default)]
struct Inner {
    by_ip: BTreeMap<Ipv4Addr, Record>,
    last: Option<Ipv4Addr>,
}

/// The store for one pool. All methods are safe to call from several threads.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    pool: Ipv4Net,
    inner: Mutex<Inner>,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync of the directory"))
}

impl Ipam {
    /// Opens (creating it, mode 0700) the store in `dir` for `pool`, loading every
    /// reservation and removing temporary files left by a crash.
    ///
    /// Records for addresses outside `pool` (the pool changed) are kept, so DEL and GC can
    /// release them, but no new address is taken outside `pool`.
    pub fn open(dir: impl Into<PathBuf>, pool: Ipv4Net) -> Result<Ipam> {
        let dir = dir.into();
        let pool = pool.trunc();
        if usable(pool) == 0 {
            return Err(IpamError::BadPool(pool));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "creating the directory"))?;
        let mut inner = Inner::default();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "listing"))? {
            let entry = entry.map_err(io_err(&dir, "listing"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(TMP_PREFIX) {
                fs::remove_file(&path).map_err(io_err(&path, "removing a stale temporary file"))?;
                continue;
            }
            if name == LAST_FILE {
                inner.last = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                continue;
            }
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let text = fs::read(&path).map_err(io_err(&path, "reading a reservation"))?;
            let record = match serde_json::from_slice::<Record>(&text) {
                Ok(r) if r.ip == ip => r,
                // Unreadable: keep the address reserved (owner unknown) until GC frees it.
                _ => {
                    tracing::warn!(%ip, path = %path.display(), "unreadable IPAM record kept reserved until GC");
                    Record {
                        ip,
                        container_id: String::new(),
                        ifname: String::new(),
                        network: String::new(),
                        netns: String::new(),
                        pod_namespace: None,
                        pod_name: None,
                        port_mappings: Vec::new(),
                    }
                }
            };
            inner.by_ip.insert(ip, record);
        }
        fsync_dir(&dir)?;
        Ok(Ipam {
            dir,
            pool,
            inner: Mutex::new(inner),
        })
    }

    /// The pool.
    pub fn pool(&self) -> Ipv4Net {
        self.pool
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| IpamError::Poisoned)
    }

    /// The reservation of (`container_id`, `ifname`), if any.
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        Ok(self
            .lock()?
            .by_ip
            .values()
            .find(|r| r.key() == (container_id, ifname))
            .cloned())
    }

    /// Every reservation, by address.
    pub fn records(&self) -> Result<Vec<Record>> {
        Ok(self.lock()?.by_ip.values().cloned().collect())
    }

    /// Number of free usable addresses in the pool.
    pub fn free(&self) -> Result<u64> {
        let inner = self.lock()?;
        let used = inner
            .by_ip
            .keys()
            .filter(|ip| self.pool.is_host_of(**ip))
            .count() as u64;
        Ok(usable(self.pool).saturating_sub(used))
    }

    /// Reserves an address for (`container_id`, `ifname`), or returns the one it already
    /// has (`(record, false)`); a new reservation is durable when this returns
    /// `(record, true)`.
    pub fn reserve(
        &self,
        container_id: &str,
        ifname: &str,
        owner: &Owner,
    ) -> Result<(Record, bool)> {
        let (record, fresh) = self.reserve_unsynced(container_id, ifname, owner)?;
        if fresh {
            self.sync(record.ip)?;
        }
        Ok((record, fresh))
    }

    /// [`Ipam::reserve`] without waiting for the disk: the reservation is in place (its
    /// file is complete and linked, so it survives the agent being killed and is never
    /// handed out twice) but is only durable across a power loss once [`Ipam::sync`] has
    /// returned for its address. Lets the CNI ADD plumb the pod while the disk flushes; the
    /// address is not answered to the runtime before that.
    pub fn reserve_unsynced(
        &self,
        container_id: &str,
        ifname: &str,
        owner: &Owner,
    ) -> Result<(Record, bool)> {
        let mut inner = self.lock()?;
        if let Some(r) = inner
            .by_ip
            .values()
            .find(|r| r.key() == (container_id, ifname))
        {
            return Ok((r.clone(), false));
        }
        // hostPorts are checked and taken under the same lock as the address: two ADDs
        // racing for one hostPort cannot both get it.
        for want in &owner.port_mappings {
            if let Some((r, m)) = inner.by_ip.values().find_map(|r| {
                r.port_mappings
                    .iter()
                    .find(|m| ferroplane_cni::plugin::mappings_overlap(m, want))
                    .map(|m| (r, m))
            }) {
                let pod = match (&r.pod_namespace, &r.pod_name) {
                    (Some(ns), Some(n)) => format!(" (pod {ns}/{n})"),
                    _ => String::new(),
                };
                return Err(IpamError::HostPortConflict {
                    port: crate::hostports::mapping_name(want),
                    owner: format!(
                        "container {} interface {}{pod}, container port {}",
                        r.container_id, r.ifname, m.container_port
                    ),
                });
            }
        }
        let base = u32::from(self.pool.addr());
        let size: u64 = 1u64 << (32 - u32::from(self.pool.prefix_len()));
        let start = match inner.last {
            Some(l) if self.pool.contains(&l) => u64::from(u32::from(l) - base) + 1,
            _ => 0,
        };
        for i in 0..size {
            let off = (start + i) % size;
            let ip = Ipv4Addr::from(base + off as u32);
            if !self.pool.is_host_of(ip) || inner.by_ip.contains_key(&ip) {
                continue;
            }
            let record = Record {
                ip,
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                network: owner.network.clone(),
                netns: owner.netns.clone(),
                pod_namespace: owner.pod_namespace.clone(),
                pod_name: owner.pod_name.clone(),
                port_mappings: owner.port_mappings.clone(),
            };
            if !self.persist_new(&record)? {
                // The file exists although memory says free: someone else's; skip it.
                continue;
            }
            inner.by_ip.insert(ip, record.clone());
            inner.last = Some(ip);
            self.write_last(ip);
            return Ok((record, true));
        }
        Err(IpamError::Exhausted {
            pool: self.pool,
            usable: usable(self.pool),
        })
    }

    /// Makes the reservation of `ip` durable: its file and the directory entry are flushed
    /// to disk (`fsync`).
    pub fn sync(&self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path, "fsync of a reservation"))?;
        fsync_dir(&self.dir)
    }

    /// Writes `record` to a temporary file and links it to its final name (the file is
    /// complete before it has that name); `false` if that name exists. Not flushed to disk:
    /// see [`Ipam::sync`].
    fn persist_new(&self, record: &Record) -> Result<bool> {
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let body = serde_json::to_vec_pretty(record).map_err(|e| IpamError::Io {
            path: tmp.clone(),
            what: "encoding a reservation",
            source: std::io::Error::other(e),
        })?;
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, "writing a reservation")(e));
        }
        let path = self.dir.join(record.ip.to_string());
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(&path, "linking a reservation")(e)),
        }
        Ok(true)
    }

    fn write_last(&self, ip: Ipv4Addr) {
        // Only a hint for where to start next time: not worth an fsync.
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}last-{}", std::process::id()));
        if fs::write(&tmp, ip.to_string()).is_ok() {
            let _ = fs::rename(&tmp, self.dir.join(LAST_FILE));
        }
    }

    fn remove_file(&self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "removing a reservation")(e)),
        }
    }

    /// Releases every reservation of (`container_id`, `ifname`); returns them (empty if there
    /// was none: DEL of an unknown container is not an error).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Record>> {
        self.release_where(|r| r.key() == (container_id, ifname))
    }

    /// GC: releases every reservation of `network` whose key is not in `keep` (and every
    /// unreadable record). Returns what was released.
    pub fn gc(&self, network: &str, keep: &BTreeSet<(String, String)>) -> Result<Vec<Record>> {
        self.release_where(|r| {
            (r.container_id.is_empty() || r.network == network)
                && !keep.contains(&(r.container_id.clone(), r.ifname.clone()))
        })
    }

    fn release_where(&self, pred: impl Fn(&Record) -> bool) -> Result<Vec<Record>> {
        let mut inner = self.lock()?;
        let gone: Vec<Record> = inner.by_ip.values().filter(|r| pred(r)).cloned().collect();
        for r in &gone {
            self.remove_file(r.ip)?;
            inner.by_ip.remove(&r.ip);
        }
        if !gone.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(gone)
    }
}

/// Usable host addresses of a pool (network and broadcast excluded below /31).
pub fn usable(pool: Ipv4Net) -> u64 {
    let size = 1u64 << (32 - u32::from(pool.prefix_len()));
    if pool.prefix_len() >= 31 {
        size
    } else {
        size - 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "fp-ipam-test-{}-{tag}-{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn owner() -> Owner {
        Owner {
            network: "net".into(),
            ..Owner::default()
        }
    }

    #[test]
    fn reserve_is_idempotent_and_persistent() {
        let d = Dir::new("persist");
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        assert_eq!(ipam.free().unwrap(), 6);
        let (a, new) = ipam.reserve("c1", "eth0", &owner()).unwrap();
        assert!(new);
        assert_eq!(a.ip, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
        let (again, new) = ipam.reserve("c1", "eth0", &owner()).unwrap();
        assert!(!new);
        assert_eq!(again, a);
        let (b, _) = ipam.reserve("c1", "eth1", &owner()).unwrap();
        assert_ne!(a.ip, b.ip);
        drop(ipam);
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        assert_eq!(ipam.get("c1", "eth0").unwrap().unwrap(), a);
        assert_eq!(ipam.free().unwrap(), 4);
        // Round robin continues after the last one handed out.
        let (c, _) = ipam.reserve("c2", "eth0", &owner()).unwrap();
        assert_eq!(c.ip, "10.1.0.3".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn exhaustion_and_release() {
        let d = Dir::new("full");
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/30")).unwrap();
        ipam.reserve("c1", "eth0", &owner()).unwrap();
        ipam.reserve("c2", "eth0", &owner()).unwrap();
        let e = ipam.reserve("c3", "eth0", &owner()).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { usable: 2, .. }), "{e}");
        assert!(e.to_string().contains("10.1.0.0/30"));
        assert_eq!(ipam.release("c1", "eth0").unwrap().len(), 1);
        assert!(
            ipam.release("c1", "eth0").unwrap().is_empty(),
            "second DEL is a no-op"
        );
        assert!(ipam.release("nope", "eth0").unwrap().is_empty());
        let (r, _) = ipam.reserve("c3", "eth0", &owner()).unwrap();
        assert_eq!(r.ip, "10.1.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn crash_leftovers_and_unreadable_records() {
        let d = Dir::new("crash");
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        ipam.reserve("c1", "eth0", &owner()).unwrap();
        drop(ipam);
        // A crash between writing the temporary file and linking it.
        fs::write(d.0.join(".tmp-999-1"), b"{\"ip\":\"10.1.0.2\"").unwrap();
        // A record that cannot be read (disk trouble): its address stays taken.
        fs::write(d.0.join("10.1.0.3"), b"garbage").unwrap();
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        assert!(!d.0.join(".tmp-999-1").exists());
        let ips: Vec<Ipv4Addr> = (0..4)
            .map(|i| {
                ipam.reserve(&format!("n{i}"), "eth0", &owner())
                    .unwrap()
                    .0
                    .ip
            })
            .collect();
        assert!(!ips.contains(&"10.1.0.3".parse().unwrap()));
        assert!(!ips.contains(&"10.1.0.1".parse().unwrap()));
        // GC keeps what is listed and frees the rest of this network, unreadable included.
        let keep: BTreeSet<(String, String)> = [("c1".to_string(), "eth0".to_string())].into();
        let gone = ipam.gc("net", &keep).unwrap();
        assert_eq!(gone.len(), 5);
        assert_eq!(ipam.records().unwrap().len(), 1);
        assert_eq!(ipam.free().unwrap(), 5);
    }

    fn pm(
        host_port: u16,
        container_port: u16,
        protocol: &str,
        host_ip: &str,
    ) -> ferroplane_cni::PortMapping {
        ferroplane_cni::PortMapping {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: host_ip.into(),
        }
    }

    /// hostPorts are taken with the address, atomically: a conflicting reservation takes
    /// nothing; they survive a reopen (restart) and go with DEL and GC.
    #[test]
    fn host_ports_are_reserved_with_the_address() {
        let d = Dir::new("hostports");
        let ipam = Ipam::open(&d.0, cidr("10.4.0.0/29")).unwrap();
        let with = |ports: Vec<ferroplane_cni::PortMapping>| Owner {
            network: "net".into(),
            pod_namespace: Some("ns".into()),
            pod_name: Some("web".into()),
            port_mappings: ports,
            ..Owner::default()
        };
        let web = with(vec![pm(8080, 80, "tcp", ""), pm(5353, 53, "udp", "")]);
        let (r, fresh) = ipam.reserve("c1", "eth0", &web).unwrap();
        assert!(fresh);
        assert_eq!(r.port_mappings, web.port_mappings);
        let free = ipam.free().unwrap();
        // Same port and protocol (any address against every address): refused, nothing taken.
        for clash in [
            pm(8080, 81, "tcp", ""),
            pm(8080, 81, "tcp", "10.0.0.1"),
            pm(5353, 53, "udp", ""),
        ] {
            let e = ipam
                .reserve("c2", "eth0", &with(vec![clash.clone()]))
                .unwrap_err();
            match &e {
                IpamError::HostPortConflict { port, owner } => {
                    assert!(port.contains(&clash.host_port.to_string()), "{e}");
                    assert!(
                        owner.contains("container c1") && owner.contains("ns/web"),
                        "{e}"
                    );
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                ipam.free().unwrap(),
                free,
                "{clash:?}: an address was taken"
            );
            assert!(ipam.get("c2", "eth0").unwrap().is_none());
        }
        // Another protocol is another port.
        ipam.reserve("c3", "eth0", &with(vec![pm(8080, 80, "udp", "")]))
            .unwrap();
        // A restart reads them back from the reservation files.
        drop(ipam);
        let ipam = Ipam::open(&d.0, cidr("10.4.0.0/29")).unwrap();
        assert_eq!(
            ipam.get("c1", "eth0").unwrap().unwrap().port_mappings,
            web.port_mappings
        );
        assert!(ipam
            .reserve("c4", "eth0", &with(vec![pm(8080, 80, "tcp", "")]))
            .is_err());
        // DEL releases them with the address.
        ipam.release("c1", "eth0").unwrap();
        ipam.reserve("c4", "eth0", &with(vec![pm(8080, 80, "tcp", "")]))
            .unwrap();
        // GC too.
        let keep: BTreeSet<(String, String)> = [("c3".to_string(), "eth0".to_string())].into();
        ipam.gc("net", &keep).unwrap();
        ipam.reserve("c5", "eth0", &with(vec![pm(8080, 80, "tcp", "")]))
            .unwrap();
    }

    #[test]
    fn gc_is_per_network() {
        let d = Dir::new("gcnet");
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        ipam.reserve("c1", "eth0", &owner()).unwrap();
        let other = Owner {
            network: "other".into(),
            ..Owner::default()
        };
        ipam.reserve("c2", "eth0", &other).unwrap();
        let gone = ipam.gc("net", &BTreeSet::new()).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].container_id, "c1");
        assert!(ipam.get("c2", "eth0").unwrap().is_some());
    }

    #[test]
    fn concurrent_reservations_never_collide() {
        let d = Dir::new("conc");
        let ipam = Arc::new(Ipam::open(&d.0, cidr("10.2.0.0/24")).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            ipam.reserve(&format!("t{t}-{i}"), "eth0", &owner())
                                .unwrap()
                                .0
                                .ip
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(ipam.free().unwrap(), 254 - 200);
        // A second store on the same directory (another process after a restart) sees them all.
        let again = Ipam::open(&d.0, cidr("10.2.0.0/24")).unwrap();
        assert_eq!(again.records().unwrap().len(), 200);
    }

    #[test]
    fn pool_change_keeps_old_records_releasable() {
        let d = Dir::new("pool");
        let ipam = Ipam::open(&d.0, cidr("10.1.0.0/29")).unwrap();
        let (r, _) = ipam.reserve("c1", "eth0", &owner()).unwrap();
        drop(ipam);
        let ipam = Ipam::open(&d.0, cidr("10.9.0.0/30")).unwrap();
        assert_eq!(ipam.free().unwrap(), 2);
        assert_eq!(ipam.release("c1", "eth0").unwrap(), vec![r]);
        assert!(Ipam::open(&d.0, cidr("10.9.0.0/32")).is_ok());
    }
}
