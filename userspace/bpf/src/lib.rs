//! ferroplane's XDP programs and their loader.
//!
//! `build.rs` compiles `ebpf/xdp_uplink.c` and `ebpf/xdp_pod.c` with clang;
//! the objects are embedded here. [`Dataplane`] loads both programs so they
//! share one set of maps (`xsks`, `ifaces`, `steer4`, `host4`, `verdicts`,
//! `drops`), attaches them to interfaces, fills the maps and reads the
//! counters. [`Dataplane::prog_test_run`] runs a program on one frame through
//! `BPF_PROG_TEST_RUN`, for tests.
//!
//! Maps are shared between the two objects by pinning (`LIBBPF_PIN_BY_NAME`):
//! with a pin directory they stay pinned there (and are reused by the next
//! load); without one they are pinned in a private directory under
//! `/sys/fs/bpf` only while loading. Either way a bpffs must be mounted; it is
//! mounted when missing.
#![deny(missing_docs)]

mod bpffs;
mod fastpath;
pub use fastpath::FLOW4_IDLE_NS;
pub mod pinned;
mod test_run;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, XskMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};

pub use ferroplane_common::{
    FpConfig, FpDropReason, FpFlow4, FpFlow4Key, FpFlowStat, FpIfCount, FpIface, FpIfaceFlags,
    FpSteerKind, FpVerdict,
};

/// The ELF object of `xdp_uplink` (built from `ebpf/xdp_uplink.c`).
pub fn uplink_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_uplink.o"))
}

/// The ELF object of `xdp_pod` (built from `ebpf/xdp_pod.c`).
pub fn pod_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pod.o"))
}

/// Names of the maps every program shares (pinned under these names).
pub const MAP_NAMES: [&str; 12] = [
    "xsks",
    "ifaces",
    "steer4",
    "host4",
    "verdicts",
    "drops",
    "tunnel4",
    "ports4",
    "flow4",
    "config",
    "flowstats",
    "fastif",
];

/// Subdirectory of the pin directory holding the XDP links kept attached across an agent
/// restart (see [`Dataplane::keep_attached`]): one file per interface, `<ifindex>_<mode> (bpffs refuses dots in names)`.
pub const LINKS_DIR: &str = "links";

/// One of ferroplane's XDP programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpProg {
    /// `xdp_uplink`: on the node's uplink; steers pod-CIDR traffic to the engine.
    Uplink,
    /// `xdp_pod`: on the host side of pod veths; sends pod traffic to the engine.
    Pod,
}

impl XdpProg {
    /// Both programs.
    pub const ALL: [Self; 2] = [Self::Uplink, Self::Pod];

    /// The program's (and C function's) name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uplink => "xdp_uplink",
            Self::Pod => "xdp_pod",
        }
    }

    /// The embedded ELF object holding the program.
    pub fn object(self) -> &'static [u8] {
        match self {
            Self::Uplink => uplink_object(),
            Self::Pod => pod_object(),
        }
    }
}

impl fmt::Display for XdpProg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to attach a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to skb (generic) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// skb (generic) mode only.
    Skb,
}

/// The mode an attached program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachedMode {
    /// Native (driver) XDP.
    Native,
    /// Generic XDP in the kernel's receive path.
    Skb,
}

impl AttachedMode {
    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    /// `native` or `skb`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counters of the programs, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpStats {
    /// Packets per verdict, indexed by [`FpVerdict`].
    pub verdicts: [u64; FpVerdict::COUNT],
    /// Packets per reason, indexed by [`FpDropReason`].
    pub drops: [u64; FpDropReason::COUNT],
    /// Fast-path outcomes, indexed by [`FpFlowStat`] (hits, and why packets missed it).
    pub flows: [u64; FpFlowStat::COUNT],
}

impl XdpStats {
    /// Packets with verdict `v`.
    pub fn verdict(&self, v: FpVerdict) -> u64 {
        self.verdicts[v as usize]
    }

    /// Packets counted under reason `r`.
    pub fn reason(&self, r: FpDropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Packets counted under fast-path outcome `f`.
    pub fn flow(&self, f: FpFlowStat) -> u64 {
        self.flows[f as usize]
    }

    /// Counter-wise `self - earlier` (saturating), e.g. the effect of one packet.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut d = *self;
        for (a, b) in d.verdicts.iter_mut().zip(earlier.verdicts) {
            *a = a.saturating_sub(b);
        }
        for (a, b) in d.drops.iter_mut().zip(earlier.drops) {
            *a = a.saturating_sub(b);
        }
        for (a, b) in d.flows.iter_mut().zip(earlier.flows) {
            *a = a.saturating_sub(b);
        }
        d
    }

    /// Non-zero counters as (name, description, value): verdicts, reasons, then fast-path
    /// outcomes.
    pub fn nonzero(&self) -> Vec<(&'static str, &'static str, u64)> {
        let verdicts = FpVerdict::ALL
            .iter()
            .map(|v| (v.name(), v.description(), self.verdict(*v)));
        let drops = FpDropReason::ALL
            .iter()
            .map(|r| (r.name(), r.description(), self.reason(*r)));
        let flows = FpFlowStat::ALL
            .iter()
            .map(|f| (f.name(), f.description(), self.flow(*f)));
        verdicts
            .chain(drops)
            .chain(flows)
            .filter(|c| c.2 != 0)
            .collect()
    }
}

/// One entry of the `steer4` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Steer4Entry {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefixlen: u8,
    /// Why the prefix is steered to the engine.
    pub kind: FpSteerKind,
}

/// Errors of [`Dataplane`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pin directory or its bpffs could not be prepared.
    #[error("preparing bpffs pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// aya could not load an object (maps creation, relocation, ...).
    #[error("loading BPF object {prog}: {}", chain(source))]
    Object {
        /// The program whose object failed.
        prog: XdpProg,
        /// The cause.
        #[source]
        source: Box<EbpfError>,
    },
    /// The kernel refused a program (verifier output in the cause).
    #[error("loading program {prog}: {}", chain(source))]
    Program {
        /// The program.
        prog: XdpProg,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object or has an unexpected type.
    #[error("map {map}: {}", chain(source))]
    Map {
        /// The map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
    /// A map holds a value this version does not know.
    #[error("map {map}: unexpected value {value}")]
    BadMapValue {
        /// The map name.
        map: &'static str,
        /// The value.
        value: u32,
    },
    /// An IPv4 prefix length above 32.
    #[error("invalid IPv4 prefix length {0}")]
    PrefixLen(u8),
    /// One of this Dataplane's programs is already attached to the interface.
    #[error("{0}: a ferroplane XDP program is already attached")]
    AlreadyAttached(String),
    /// None of this Dataplane's programs is attached to the interface.
    #[error("{0}: no ferroplane XDP program is attached")]
    NotAttached(String),
    /// Attaching in one mode failed.
    #[error("attaching {prog} to {ifname} in {mode} mode: {}", chain(source))]
    Attach {
        /// The program.
        prog: XdpProg,
        /// The interface.
        ifname: String,
        /// The mode tried.
        mode: AttachedMode,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching in [`AttachMode::Auto`] failed in both modes.
    #[error(
        "attaching {prog} to {ifname}: native mode: {}; skb mode: {}",
        chain(native),
        chain(skb)
    )]
    AttachAuto {
        /// The program.
        prog: XdpProg,
        /// The interface.
        ifname: String,
        /// Why native mode failed.
        native: Box<ProgramError>,
        /// Why skb mode failed.
        #[source]
        skb: Box<ProgramError>,
    },
    /// Detaching failed.
    #[error("detaching {prog} from {ifname}: {}", chain(source))]
    Detach {
        /// The program.
        prog: XdpProg,
        /// The interface.
        ifname: String,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// Keeping or adopting an attachment across a restart (pinned XDP link) failed.
    #[error("XDP link of {ifname} ({path}): {detail}")]
    KeptLink {
        /// Interface.
        ifname: String,
        /// Pin path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The number of possible CPUs could not be read.
    #[error("reading the number of CPUs: {0}")]
    Cpus(#[source] io::Error),
    /// Reading pinned maps or loaded programs failed.
    #[error("{0}")]
    Pinned(String),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN of {prog}: {source}")]
    TestRun {
        /// The program.
        prog: XdpProg,
        /// The cause (errno).
        #[source]
        source: io::Error,
    },
}

/// Result of [`Dataplane`] operations.
pub type Result<T> = std::result::Result<T, Error>;

/// `err: cause: cause...`, so errno values hidden in sources show up.
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

struct Attachment {
    prog: XdpProg,
    mode: AttachedMode,
    link: XdpLinkId,
}

/// Both XDP programs, loaded, with their shared maps.
///
/// Programs attached through a `Dataplane` are detached when it is dropped
/// (attachment is through BPF links owned by this process). Pinned maps stay.
pub struct Dataplane {
    uplink: Ebpf,
    pod: Ebpf,
    xsks: XskMap<MapData>,
    ifaces: BpfHashMap<MapData, u32, FpIface>,
    steer4: LpmTrie<MapData, [u8; 4], u32>,
    host4: BpfHashMap<MapData, [u8; 4], u32>,
    tunnel4: BpfHashMap<MapData, u32, u32>,
    ports4: BpfHashMap<MapData, u32, u32>,
    flow4: BpfHashMap<MapData, FpFlow4Key, FpFlow4>,
    verdicts: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    config: aya::maps::Array<MapData, FpConfig>,
    flowstats: PerCpuArray<MapData, u64>,
    fastif: aya::maps::PerCpuHashMap<MapData, u32, FpIfCount>,
    attached: HashMap<String, Attachment>,
    pin_dir: Option<PathBuf>,
    keep: bool,
    replaced_maps: Vec<String>,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir)
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}

/// Maps an aya map error to [`Error::Map`].
fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

/// `Ok(false)` for a delete of a missing key, `Ok(true)` for a delete.
fn removed(map: &'static str, r: std::result::Result<(), MapError>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(source) => Err(Error::Map {
            map,
            source: Box::new(source),
        }),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::Map {
        map: name,
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })?;
    T::try_from(map).map_err(map_err(name))
}

/// Removes the pins under `dir` of ferroplane's maps whose key size, value size or capacity
/// differ from what `prog`'s object declares (left by a version with another layout, e.g.
/// a new verdict or a wider `flow4` value): the load then creates them afresh instead of
/// failing verification or miscounting. Programs still attached keep their old maps until
/// the new ones are adopted. Returns the names removed.
fn unpin_incompatible(prog: XdpProg, dir: &Path) -> Vec<String> {
    let Ok(obj) = aya_obj::Object::parse(prog.object()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for (name, map) in &obj.maps {
        if !MAP_NAMES.contains(&name.as_str()) {
            continue;
        }
        let path = dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let same = info.key_size() == map.key_size()
            && info.value_size() == map.value_size()
            && info.max_entries() == map.max_entries();
        if !same && std::fs::remove_file(&path).is_ok() {
            removed.push(name.clone());
        }
    }
    removed
}

fn load_object(prog: XdpProg, pin_dir: &Path) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(prog.object())
        .map_err(|e| Error::Object {
            prog,
            source: Box::new(e),
        })?;
    let program: &mut Xdp = ebpf
        .program_mut(prog.name())
        .ok_or(Error::Program {
            prog,
            source: Box::new(ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(|source| Error::Program {
            prog,
            source: Box::new(source),
        })?;
    program.load().map_err(|source| Error::Program {
        prog,
        source: Box::new(source),
    })?;
    Ok(ebpf)
}

/// Prefix octets with the host bits cleared.
fn network(addr: Ipv4Addr, prefixlen: u8) -> Result<[u8; 4]> {
    if prefixlen > 32 {
        return Err(Error::PrefixLen(prefixlen));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefixlen)).unwrap_or(0);
    Ok((u32::from(addr) & mask).to_be_bytes())
}

impl Dataplane {
    /// Loads both programs and their maps.
    ///
    /// With `pin_dir` (e.g. `/sys/fs/bpf/ferroplane`) the maps are pinned
    /// there, and maps already pinned there are reused. Without it the maps
    /// are private to this `Dataplane`. A bpffs is mounted on `/sys/fs/bpf`
    /// (or on `pin_dir` when it is elsewhere) if none covers the directory.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self> {
        let private;
        let dir = match pin_dir {
            Some(dir) => {
                bpffs::prepare(dir).map_err(|source| Error::PinDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
                dir
            }
            None => {
                private = bpffs::PrivatePinDir::create().map_err(|source| Error::PinDir {
                    path: PathBuf::from(bpffs::DEFAULT_BPFFS),
                    source,
                })?;
                private.path()
            }
        };
        let replaced_maps = match pin_dir {
            Some(dir) => {
                let mut names: Vec<String> = XdpProg::ALL
                    .iter()
                    .flat_map(|p| unpin_incompatible(*p, dir))
                    .collect();
                names.sort();
                names.dedup();
                names
            }
            None => Vec::new(),
        };
        let mut uplink = load_object(XdpProg::Uplink, dir)?;
        let pod = load_object(XdpProg::Pod, dir)?;
        // Both objects now use the same kernel maps; keep handles from one.
        Ok(Self {
            xsks: take_map(&mut uplink, "xsks")?,
            ifaces: take_map(&mut uplink, "ifaces")?,
            steer4: take_map(&mut uplink, "steer4")?,
            host4: take_map(&mut uplink, "host4")?,
            tunnel4: take_map(&mut uplink, "tunnel4")?,
            ports4: take_map(&mut uplink, "ports4")?,
            flow4: take_map(&mut uplink, "flow4")?,
            verdicts: take_map(&mut uplink, "verdicts")?,
            drops: take_map(&mut uplink, "drops")?,
            config: take_map(&mut uplink, "config")?,
            flowstats: take_map(&mut uplink, "flowstats")?,
            fastif: take_map(&mut uplink, "fastif")?,
            uplink,
            pod,
            attached: HashMap::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            keep: false,
            replaced_maps,
        })
    }

    /// Pinned maps this load replaced because their layout differed from this version's
    /// (their old entries are gone; e.g. the flow cache after an upgrade that widened it).
    pub fn replaced_maps(&self) -> &[String] {
        &self.replaced_maps
    }

    /// The directory the maps are pinned in, if any.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn xdp(&self, prog: XdpProg) -> Result<&Xdp> {
        let ebpf = match prog {
            XdpProg::Uplink => &self.uplink,
            XdpProg::Pod => &self.pod,
        };
        ebpf.program(prog.name())
            .ok_or(Error::Program {
                prog,
                source: Box::new(ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|source| Error::Program {
                prog,
                source: Box::new(source),
            })
    }

    fn xdp_mut(&mut self, prog: XdpProg) -> Result<&mut Xdp> {
        let ebpf = match prog {
            XdpProg::Uplink => &mut self.uplink,
            XdpProg::Pod => &mut self.pod,
        };
        ebpf.program_mut(prog.name())
            .ok_or(Error::Program {
                prog,
                source: Box::new(ProgramError::UnexpectedProgramType),
            })?
            .try_into()
            .map_err(|source| Error::Program {
                prog,
                source: Box::new(source),
            })
    }

    /// Attaches `prog` to the interface `ifname` (in the calling thread's
    /// network namespace). [`AttachMode::Auto`] tries native mode, then skb
    /// mode. Returns the mode that worked.
    pub fn attach(
        &mut self,
        prog: XdpProg,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<AttachedMode> {
        if self.attached.contains_key(ifname) {
            return Err(Error::AlreadyAttached(ifname.to_string()));
        }
        if let Some(mode) = self.adopt_kept(prog, ifname)? {
            return Ok(mode);
        }
        let xdp = self.xdp_mut(prog)?;
        let try_mode = |xdp: &mut Xdp, m: AttachedMode| xdp.attach(ifname, m.xdp_mode());
        let (link, attached) = match mode {
            AttachMode::Native | AttachMode::Skb => {
                let m = if mode == AttachMode::Native {
                    AttachedMode::Native
                } else {
                    AttachedMode::Skb
                };
                let link = try_mode(xdp, m).map_err(|source| Error::Attach {
                    prog,
                    ifname: ifname.to_string(),
                    mode: m,
                    source: Box::new(source),
                })?;
                (link, m)
            }
            AttachMode::Auto => match try_mode(xdp, AttachedMode::Native) {
                Ok(link) => (link, AttachedMode::Native),
                Err(native) => match try_mode(xdp, AttachedMode::Skb) {
                    Ok(link) => (link, AttachedMode::Skb),
                    Err(skb) => {
                        return Err(Error::AttachAuto {
                            prog,
                            ifname: ifname.to_string(),
                            native: Box::new(native),
                            skb: Box::new(skb),
                        })
                    }
                },
            },
        };
        self.attached.insert(
            ifname.to_string(),
            Attachment {
                prog,
                mode: attached,
                link,
            },
        );
        if self.keep {
            self.pin_attachment(ifname)?;
        }
        Ok(attached)
    }

    /// Detaches the program this `Dataplane` attached to `ifname`.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let att = self
            .attached
            .remove(ifname)
            .ok_or_else(|| Error::NotAttached(ifname.to_string()))?;
        // A pinned (kept) link would outlive the detach: unpin it first.
        if let (Some(dir), Some(ifindex)) = (self.links_dir(), Self::ifindex(ifname)) {
            let _ = std::fs::remove_file(dir.join(format!("{ifindex}_{}", att.mode.name())));
        }
        let prog = att.prog;
        self.xdp_mut(prog)?
            .detach(att.link)
            .map_err(|source| Error::Detach {
                prog,
                ifname: ifname.to_string(),
                source: Box::new(source),
            })
    }

    /// Records that the interface `old` (with a program attached by this `Dataplane`) was
    /// renamed to `new`: the attachment follows the device, only its key changes.
    pub fn rename_attached(&mut self, old: &str, new: &str) -> Result<()> {
        if self.attached.contains_key(new) {
            return Err(Error::AlreadyAttached(new.to_string()));
        }
        let att = self
            .attached
            .remove(old)
            .ok_or_else(|| Error::NotAttached(old.to_string()))?;
        self.attached.insert(new.to_string(), att);
        Ok(())
    }

    /// Interfaces with a program attached by this `Dataplane`, sorted by name.
    pub fn attached(&self) -> Vec<(String, XdpProg, AttachedMode)> {
        let mut v: Vec<_> = self
            .attached
            .iter()
            .map(|(name, a)| (name.clone(), a.prog, a.mode))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The kernel index of `ifname` in the calling thread's namespace.
    fn ifindex(ifname: &str) -> Option<u32> {
        let name = std::ffi::CString::new(ifname).ok()?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (index != 0).then_some(index)
    }

    /// Whether an interface with index `ifindex` exists in the calling thread's namespace.
    fn ifindex_exists(ifindex: u32) -> bool {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
        !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
    }

    fn links_dir(&self) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join(LINKS_DIR))
    }

    /// If a previous agent kept its program attached to `ifname` ([`Dataplane::keep_attached`]),
    /// takes that attachment over: the kept link is atomically switched to this `Dataplane`'s
    /// program (the interface never runs without one) and unpinned. `None` if nothing was
    /// kept for it.
    fn adopt_kept(&mut self, prog: XdpProg, ifname: &str) -> Result<Option<AttachedMode>> {
        let (Some(dir), Some(ifindex)) = (self.links_dir(), Self::ifindex(ifname)) else {
            return Ok(None);
        };
        for mode in [AttachedMode::Native, AttachedMode::Skb] {
            let path = dir.join(format!("{ifindex}_{}", mode.name()));
            if !path.exists() {
                continue;
            }
            let kept = |detail: String| Error::KeptLink {
                ifname: ifname.to_string(),
                path: path.clone(),
                detail,
            };
            let pinned = PinnedLink::from_pin(&path).map_err(|e| kept(chain(&e)))?;
            let fd: FdLink = pinned.unpin().map_err(|e| kept(chain(&e)))?;
            let link = XdpLink::try_from(fd).map_err(|e| kept(chain(&e)))?;
            let id = self
                .xdp_mut(prog)?
                .attach_to_link(link)
                .map_err(|e| kept(chain(&e)))?;
            self.attached.insert(
                ifname.to_string(),
                Attachment {
                    prog,
                    mode,
                    link: id,
                },
            );
            if self.keep {
                self.pin_attachment(ifname)?;
            }
            return Ok(Some(mode));
        }
        Ok(None)
    }

    /// Keeps the programs attached when this `Dataplane` is dropped or its process dies (the
    /// agent restarts; `--on-exit keep`): from now on every attachment's link is pinned
    /// under `<pin dir>/links/<ifindex>_<mode> (bpffs refuses dots in names)`, including those made before, and the next
    /// agent's [`Dataplane::attach`] adopts it. [`Dataplane::detach`] still detaches (and
    /// unpins). Needs a pin directory.
    pub fn keep_attached(&mut self) -> Result<()> {
        let Some(dir) = self.links_dir() else {
            return Err(Error::KeptLink {
                ifname: String::new(),
                path: PathBuf::new(),
                detail: "keeping programs attached needs a pin directory".into(),
            });
        };
        std::fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
        self.keep = true;
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for name in names {
            self.pin_attachment(&name)?;
        }
        Ok(())
    }

    /// Pins the link of the attachment on `ifname` (idempotent).
    fn pin_attachment(&mut self, ifname: &str) -> Result<()> {
        let (Some(dir), Some(ifindex)) = (self.links_dir(), Self::ifindex(ifname)) else {
            return Ok(());
        };
        let Some(att) = self.attached.remove(ifname) else {
            return Ok(());
        };
        let path = dir.join(format!("{ifindex}_{}", att.mode.name()));
        let err = |detail: String| Error::KeptLink {
            ifname: ifname.to_string(),
            path: path.clone(),
            detail,
        };
        let xdp = self.xdp_mut(att.prog)?;
        let link = xdp.take_link(att.link).map_err(|e| err(chain(&e)))?;
        let fd = FdLink::try_from(link).map_err(|e| err(chain(&e)))?;
        // Already pinned (an adopted link) or a leftover of a reused index: pin afresh.
        let _ = std::fs::remove_file(&path);
        let pinned = fd.pin(&path).map_err(|e| err(chain(&e)))?;
        // Hand the (now pinned) link back to the program so detach works as before.
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| err(chain(&e)))?;
        let id = xdp.attach_to_link(link).map_err(|e| err(chain(&e)))?;
        self.attached.insert(
            ifname.to_string(),
            Attachment {
                prog: att.prog,
                mode: att.mode,
                link: id,
            },
        );
        Ok(())
    }

    /// Removes kept links (see [`Dataplane::keep_attached`]) of interfaces that no longer
    /// exist (in the calling thread's namespace). Returns how many were removed.
    pub fn release_stale_links(&self) -> usize {
        let Some(dir) = self.links_dir() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let index = name
                    .to_str()
                    .and_then(|n| n.split('_').next())
                    .and_then(|i| i.parse::<u32>().ok());
                index.is_some_and(|i| !Self::ifindex_exists(i))
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Records how the XDP programs forward an established flow (`flow4`).
    pub fn set_flow4(&mut self, key: FpFlow4Key, value: FpFlow4) -> Result<()> {
        self.flow4.insert(key, value, 0).map_err(map_err("flow4"))
    }

    /// The `flow4` entries (unordered).
    pub fn flow4(&self) -> Result<Vec<(FpFlow4Key, FpFlow4)>> {
        self.flow4
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("flow4"))
    }

    /// Empties `flow4`; returns how many entries were removed.
    pub fn clear_flow4(&mut self) -> Result<usize> {
        let keys = self
            .flow4
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("flow4"))?;
        let mut n = 0;
        for k in keys {
            n += removed("flow4", self.flow4.remove(&k))? as usize;
        }
        Ok(n)
    }

    /// Sets the `ifaces` entry of `ifindex`.
    pub fn set_iface(&mut self, ifindex: u32, iface: FpIface) -> Result<()> {
        self.ifaces
            .insert(ifindex, iface, 0)
            .map_err(map_err("ifaces"))
    }

    /// Removes the `ifaces` entry of `ifindex`; `false` if there was none.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<bool> {
        removed("ifaces", self.ifaces.remove(&ifindex))
    }

    /// The `ifaces` entries, sorted by ifindex.
    pub fn ifaces(&self) -> Result<Vec<(u32, FpIface)>> {
        let mut v = self
            .ifaces
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("ifaces"))?;
        v.sort_unstable_by_key(|e| e.0);
        Ok(v)
    }

    /// Puts the AF_XDP socket `fd` in `xsks` slot `slot`. The socket must be
    /// bound (or at least have its UMEM, fill ring and rx ring set up).
    pub fn set_xsk(&mut self, slot: u32, fd: RawFd) -> Result<()> {
        self.xsks.set(slot, fd, 0).map_err(map_err("xsks"))
    }

    /// Empties `xsks` slot `slot`.
    pub fn clear_xsk(&mut self, slot: u32) -> Result<()> {
        removed("xsks", self.xsks.unset(slot)).map(|_| ())
    }

    /// Steers IPv4 destinations in `addr/prefixlen` (host bits ignored) to the
    /// engine on the uplink, replacing the entry's kind if it exists.
    pub fn add_steer4(&mut self, addr: Ipv4Addr, prefixlen: u8, kind: FpSteerKind) -> Result<()> {
        let key = LpmKey::new(u32::from(prefixlen), network(addr, prefixlen)?);
        self.steer4
            .insert(&key, kind.as_u32(), 0)
            .map_err(map_err("steer4"))
    }

    /// Removes the `steer4` entry `addr/prefixlen`; `false` if there was none.
    pub fn remove_steer4(&mut self, addr: Ipv4Addr, prefixlen: u8) -> Result<bool> {
        let key = LpmKey::new(u32::from(prefixlen), network(addr, prefixlen)?);
        removed("steer4", self.steer4.remove(&key))
    }

    /// The `steer4` entries, sorted by address then prefix length.
    pub fn steer4(&self) -> Result<Vec<Steer4Entry>> {
        let mut v = Vec::new();
        for entry in self.steer4.iter() {
            let (key, value) = entry.map_err(map_err("steer4"))?;
            let kind = FpSteerKind::from_u32(value).ok_or(Error::BadMapValue {
                map: "steer4",
                value,
            })?;
            let prefixlen = u8::try_from(key.prefix_len()).map_err(|_| Error::BadMapValue {
                map: "steer4",
                value: key.prefix_len(),
            })?;
            v.push(Steer4Entry {
                addr: Ipv4Addr::from(key.data()),
                prefixlen,
                kind,
            });
        }
        v.sort_unstable_by_key(|e| (e.addr, e.prefixlen));
        Ok(v)
    }

    /// Marks `addr` as one of the node's own addresses (traffic to it is
    /// passed to the kernel by both programs).
    pub fn add_host4(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.host4
            .insert(addr.octets(), 1, 0)
            .map_err(map_err("host4"))
    }

    /// Removes `addr` from `host4`; `false` if it was not there.
    pub fn remove_host4(&mut self, addr: Ipv4Addr) -> Result<bool> {
        removed("host4", self.host4.remove(&addr.octets()))
    }

    /// Steers overlay traffic addressed to a `host4` address to the engine:
    /// IP protocol `proto` (4 = IPIP; `port` 0) or UDP (17) to destination `port`.
    pub fn add_tunnel4(&mut self, proto: u8, port: u16) -> Result<()> {
        self.tunnel4
            .insert((u32::from(proto) << 16) | u32::from(port), 1, 0)
            .map_err(map_err("tunnel4"))
    }

    /// Stops steering `proto`/`port` (see [`Dataplane::add_tunnel4`]); `false` if it was not there.
    pub fn remove_tunnel4(&mut self, proto: u8, port: u16) -> Result<bool> {
        removed(
            "tunnel4",
            self.tunnel4
                .remove(&((u32::from(proto) << 16) | u32::from(port))),
        )
    }

    /// The steered tunnel (protocol, port) pairs, sorted.
    pub fn tunnel4(&self) -> Result<Vec<(u8, u16)>> {
        let mut v = self
            .tunnel4
            .keys()
            .map(|k| k.map(|k| ((k >> 16) as u8, k as u16)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("tunnel4"))?;
        v.sort_unstable();
        Ok(v)
    }

    /// Steers traffic to a `host4` address with IP protocol `proto` and destination `port`
    /// (ICMP: echo replies with that id) to the engine; `kind` is `FP_PORT_NODEPORT` or
    /// `FP_PORT_SNAT`.
    pub fn add_port4(&mut self, proto: u8, port: u16, kind: u32) -> Result<()> {
        self.ports4
            .insert((u32::from(proto) << 16) | u32::from(port), kind, 0)
            .map_err(map_err("ports4"))
    }

    /// Stops steering `proto`/`port` (see [`Dataplane::add_port4`]); `false` if it was not there.
    pub fn remove_port4(&mut self, proto: u8, port: u16) -> Result<bool> {
        removed(
            "ports4",
            self.ports4
                .remove(&((u32::from(proto) << 16) | u32::from(port))),
        )
    }

    /// The steered (protocol, port, kind) entries, sorted.
    pub fn ports4(&self) -> Result<Vec<(u8, u16, u32)>> {
        let mut v = self
            .ports4
            .iter()
            .map(|r| r.map(|(k, kind)| ((k >> 16) as u8, k as u16, kind)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("ports4"))?;
        v.sort_unstable();
        Ok(v)
    }

    /// The `host4` addresses, sorted.
    pub fn host4(&self) -> Result<Vec<Ipv4Addr>> {
        let mut v = self
            .host4
            .keys()
            .map(|k| k.map(Ipv4Addr::from))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err("host4"))?;
        v.sort_unstable();
        Ok(v)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats> {
        let mut stats = XdpStats::default();
        let sum = |map: &PerCpuArray<MapData, u64>, name, i: usize| -> Result<u64> {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let values = map.get(&index, 0).map_err(map_err(name))?;
            Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        };
        for (i, c) in stats.verdicts.iter_mut().enumerate() {
            *c = sum(&self.verdicts, "verdicts", i)?;
        }
        for (i, c) in stats.drops.iter_mut().enumerate() {
            *c = sum(&self.drops, "drops", i)?;
        }
        for (i, c) in stats.flows.iter_mut().enumerate() {
            *c = sum(&self.flowstats, "flowstats", i)?;
        }
        Ok(stats)
    }

    /// Sets every counter to zero.
    pub fn clear_stats(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Cpus(source))?;
        let zeros = || PerCpuValues::try_from(vec![0u64; cpus]).map_err(Error::Cpus);
        for i in 0..FpVerdict::ALL.len() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.verdicts
                .set(index, zeros()?, 0)
                .map_err(map_err("verdicts"))?;
        }
        for i in 0..FpDropReason::ALL.len() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.drops
                .set(index, zeros()?, 0)
                .map_err(map_err("drops"))?;
        }
        for i in 0..FpFlowStat::ALL.len() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.flowstats
                .set(index, zeros()?, 0)
                .map_err(map_err("flowstats"))?;
        }
        self.clear_fastif()?;
        Ok(())
    }

    /// Runs `prog` once on `frame` with `BPF_PROG_TEST_RUN`, as if received on
    /// the loopback device's queue 0 (ifindex 1 in any network namespace).
    /// Returns the XDP action (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, ...) and the
    /// frame as the program left it.
    ///
    /// The kernel refuses frames shorter than an Ethernet header (14 bytes)
    /// with `EINVAL` (since 6.18 XDP metadata does not count towards it), so
    /// the programs' truncated-Ethernet path cannot be driven from here; real
    /// devices do not deliver such frames either.
    ///
    /// Without a socket in the `xsks` slot the engine is away: the redirect
    /// path shows as `XDP_DROP` with the `engine_away` verdict (`XDP_PASS` and
    /// `redirect_failed` for a pod's ARP request), or `XDP_REDIRECT` with the
    /// `flow_cache` verdict on a flow4 hit; with a socket the action is
    /// `XDP_REDIRECT` (test runs do not deliver redirected frames).
    pub fn prog_test_run(&self, prog: XdpProg, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.prog_test_run_on(prog, frame, 0, 0)
    }

    /// [`Dataplane::prog_test_run`] as if received on `ingress_ifindex`
    /// (0 = loopback) queue `rx_queue_index` of the calling thread's network
    /// namespace. The queue must exist on the device.
    pub fn prog_test_run_on(
        &self,
        prog: XdpProg,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue_index: u32,
    ) -> Result<(u32, Vec<u8>)> {
        let fd = self.xdp(prog)?.fd().map_err(|source| Error::Program {
            prog,
            source: Box::new(source),
        })?;
        test_run::xdp(fd, frame, ingress_ifindex, rx_queue_index)
            .map_err(|source| Error::TestRun { prog, source })
    }
}

/// Now on the clock the XDP programs read (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// XDP action numbers (`enum xdp_action`), for reading test-run results.
pub mod xdp_action {
    /// `XDP_ABORTED`
    pub const ABORTED: u32 = 0;
    /// `XDP_DROP`
    pub const DROP: u32 = 1;
    /// `XDP_PASS`
    pub const PASS: u32 = 2;
    /// `XDP_TX`
    pub const TX: u32 = 3;
    /// `XDP_REDIRECT`
    pub const REDIRECT: u32 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_masks_host_bits() {
        let a = Ipv4Addr::new(10, 244, 1, 77);
        assert_eq!(network(a, 24).unwrap(), [10, 244, 1, 0]);
        assert_eq!(network(a, 32).unwrap(), [10, 244, 1, 77]);
        assert_eq!(network(a, 0).unwrap(), [0, 0, 0, 0]);
        assert_eq!(network(a, 9).unwrap(), [10, 128, 0, 0]);
        assert!(matches!(network(a, 33), Err(Error::PrefixLen(33))));
    }

    #[test]
    fn stats_since_and_nonzero() {
        let mut a = XdpStats::default();
        a.verdicts[FpVerdict::Pass as usize] = 5;
        let mut b = a;
        b.verdicts[FpVerdict::Pass as usize] = 7;
        b.drops[FpDropReason::NoXsk as usize] = 1;
        let d = b.since(&a);
        assert_eq!(d.verdict(FpVerdict::Pass), 2);
        assert_eq!(d.reason(FpDropReason::NoXsk), 1);
        assert_eq!(
            d.nonzero(),
            vec![
                ("pass", FpVerdict::Pass.description(), 2),
                ("no_xsk", FpDropReason::NoXsk.description(), 1)
            ]
        );
    }

    #[test]
    fn objects_are_embedded_elf() {
        for p in XdpProg::ALL {
            assert_eq!(&p.object()[..4], b"\x7fELF", "{p}");
        }
    }
}
