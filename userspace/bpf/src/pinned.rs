//! Inspection of pinned maps and loaded programs, bpftool-style, without
//! the agent: `ferroctl map list|dump` and `ferroctl prog list` use this.

use std::path::Path;

use aya::maps::{MapData, MapInfo, MapType};
use aya::programs::loaded_programs;
use std::os::fd::{AsFd, AsRawFd};

use crate::{Error, Result};

/// A map pinned under a pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedMap {
    /// File name of the pin (the map's name).
    pub name: String,
    /// Kernel map id.
    pub id: u32,
    /// Map type, as the kernel reports it.
    pub map_type: String,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

/// One raw map entry: (key bytes, value bytes).
pub type MapEntry = (Vec<u8>, Vec<u8>);

/// A loaded ferroplane XDP program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProg {
    /// Kernel program id.
    pub id: u32,
    /// Program name.
    pub name: String,
    /// Ids of the maps it uses.
    pub map_ids: Vec<u32>,
    /// Instructions after verification, when the kernel says.
    pub verified_insns: Option<u32>,
}

fn map_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Pinned(format!("{op}: {e}"))
}

fn type_name(t: std::result::Result<MapType, aya::maps::MapError>) -> String {
    match t {
        Ok(t) => format!("{t:?}"),
        Err(_) => "unknown".into(),
    }
}

/// Every map pinned directly under `dir`.
pub fn list_pinned(dir: &Path) -> Result<Vec<PinnedMap>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| map_err(&format!("reading {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue; // not a map pin
        };
        out.push(PinnedMap {
            name: entry.file_name().to_string_lossy().into_owned(),
            id: info.id(),
            map_type: type_name(info.map_type()),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Loaded programs named like ours (`xdp_uplink`, `xdp_pod`, ...).
pub fn list_programs() -> Result<Vec<LoadedProg>> {
    let mut out = Vec::new();
    for p in loaded_programs() {
        let p = p.map_err(|e| map_err("listing programs", e))?;
        let name = p.name_as_str().unwrap_or("").to_string();
        if !name.starts_with("xdp_uplink") && !name.starts_with("xdp_pod") {
            continue;
        }
        out.push(LoadedProg {
            id: p.id(),
            name,
            map_ids: p.map_ids().ok().flatten().unwrap_or_default(),
            verified_insns: p.verified_instruction_count(),
        });
    }
    out.sort_by_key(|p| p.id);
    Ok(out)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut MapElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix for the map element
    // commands; the key/value pointers it carries point at buffers of the sizes
    // the kernel reported for this map, alive for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut MapElemAttr,
            std::mem::size_of::<MapElemAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Raw entries (key bytes, value bytes) of a pinned map. Per-CPU maps give one
/// value slot per possible CPU, concatenated (8-byte aligned each).
pub fn dump_pinned(path: &Path) -> Result<(PinnedMap, Vec<MapEntry>)> {
    let info = MapInfo::from_pin(path).map_err(|e| map_err(&format!("{}", path.display()), e))?;
    let data = MapData::from_pin(path).map_err(|e| map_err(&format!("{}", path.display()), e))?;
    let map_type = info.map_type().ok();
    let meta = PinnedMap {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        id: info.id(),
        map_type: map_type
            .map(|t| format!("{t:?}"))
            .unwrap_or_else(|| "unknown".into()),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    let per_cpu = matches!(
        map_type,
        Some(MapType::PerCpuArray) | Some(MapType::PerCpuHash) | Some(MapType::LruPerCpuHash)
    );
    let is_xsk = matches!(map_type, Some(MapType::XskMap) | Some(MapType::DevMap));
    let cpus = if per_cpu {
        aya::util::nr_cpus().map_err(|(_, e)| map_err("possible CPUs", e))?
    } else {
        1
    };
    let slot = if per_cpu {
        (meta.value_size as usize).div_ceil(8) * 8
    } else {
        meta.value_size as usize
    };
    let fd = data.fd().as_fd().as_raw_fd() as u32;
    let ks = meta.key_size as usize;
    let mut out = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; ks];
    for _ in 0..=meta.max_entries {
        let mut attr = MapElemAttr {
            map_fd: fd,
            key: key.as_ref().map(|k| k.as_ptr() as u64).unwrap_or(0),
            value_or_next: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(map_err("BPF_MAP_GET_NEXT_KEY", e)),
        }
        let k = next.clone();
        let mut value = vec![0u8; slot * cpus];
        if !is_xsk {
            let mut attr = MapElemAttr {
                map_fd: fd,
                key: k.as_ptr() as u64,
                value_or_next: value.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    key = Some(k);
                    continue;
                }
                Err(e) => return Err(map_err("BPF_MAP_LOOKUP_ELEM", e)),
            }
        } else {
            value.clear();
        }
        out.push((k.clone(), value));
        key = Some(k);
    }
    Ok((meta, out))
}
