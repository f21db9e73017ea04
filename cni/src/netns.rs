//! Checking `CNI_NETNS` before anything is allocated: the path must be a network namespace
//! (an nsfs file of type `net`), and not the node's own.
//!
//! A namespace is identified by the device and inode of its nsfs file, as `ip netns
//! identify` does. The type comes from the kernel itself: the open file must live on nsfs
//! (`fstatfs` gives `NSFS_MAGIC`, also through the bind mounts `ip netns add` makes) and
//! `NS_GET_NSTYPE` must say `CLONE_NEWNET`, so nothing but a network namespace passes. The
//! file is opened with `O_NONBLOCK`, so a FIFO planted at the path cannot hang the caller.
//!
//! "The node's own namespace" is every namespace in [`host_namespaces`]: the one the
//! calling process runs in (the agent runs in the node's; the plugin in the runtime's) and
//! the one of PID 1 (the machine's root namespace, when visible). The agent's check is the
//! authoritative one; the plugin's is a cheap first line.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A namespace's identity: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino` of the nsfs file (the number in `net:[...]`).
    pub ino: u64,
}

impl NsId {
    /// The identity of the namespace file at `path` (symlinks such as `/proc/PID/ns/net`
    /// are followed).
    pub fn of(path: &Path) -> io::Result<NsId> {
        let m = std::fs::metadata(path)?;
        Ok(NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A namespace the node itself uses, with a description for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNs {
    /// Its identity.
    pub id: NsId,
    /// What it is, e.g. "the network namespace this process runs in".
    pub what: &'static str,
}

/// The network namespaces a pod must never be plumbed into, as seen from this process:
/// its own (`/proc/self/ns/net`) and PID 1's (`/proc/1/ns/net`, skipped if unreadable).
pub fn host_namespaces() -> Vec<HostNs> {
    let mut v = Vec::with_capacity(2);
    let candidates = [
        (
            "/proc/self/ns/net",
            "the network namespace this process runs in",
        ),
        ("/proc/1/ns/net", "the network namespace of PID 1"),
    ];
    for (path, what) in candidates {
        if let Ok(id) = NsId::of(Path::new(path)) {
            if !v.iter().any(|h: &HostNs| h.id == id) {
                v.push(HostNs { id, what });
            }
        }
    }
    v
}

/// Why a path is not a usable pod network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Nothing at the path.
    #[error("network namespace {path} does not exist")]
    Missing {
        /// The path.
        path: String,
    },
    /// Something other than a network namespace.
    #[error("CNI_NETNS {path} is not a network namespace ({what})")]
    NotNetns {
        /// The path.
        path: String,
        /// What it is instead ("a regular file", "a directory", "a mnt namespace", ...).
        what: String,
    },
    /// The node's own network namespace.
    #[error("CNI_NETNS {path} is the node's own network namespace ({what}): refused")]
    Host {
        /// The path.
        path: String,
        /// Which of the [`host_namespaces`] it is.
        what: &'static str,
    },
    /// The path could not be inspected.
    #[error("CNI_NETNS {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: io::Error,
    },
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// `statfs` magic of nsfs (`NSFS_MAGIC` in `linux/magic.h`).
const NSFS_MAGIC: libc::__fsword_t = 0x6e73_6673;
/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)` in `linux/nsfs.h`): the `CLONE_NEW*` type of an nsfs file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The namespace names of the `CLONE_NEW*` flags, for messages.
fn ns_type_name(t: libc::c_int) -> &'static str {
    match t {
        libc::CLONE_NEWNET => "net",
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWCGROUP => "cgroup",
        0x80 => "time",
        _ => "unknown",
    }
}

/// Whether the open file `f` lives on nsfs (`fstatfs`).
fn on_nsfs(f: &File) -> io::Result<bool> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `f` is an open descriptor for the duration of the call and `st` points to
    // writable memory of the size `fstatfs` fills.
    let r = unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fstatfs` returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_type == NSFS_MAGIC)
}

/// The `CLONE_NEW*` type of the open nsfs file `f` (`NS_GET_NSTYPE`).
fn ns_type(f: &File) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which is
    // open for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Checks that `path` is a network namespace (see the module doc) and returns its identity.
pub fn netns_id(path: &str) -> Result<NsId, NetnsError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            NetnsError::Missing {
                path: path.to_string(),
            }
        } else {
            NetnsError::Io {
                path: path.to_string(),
                source,
            }
        }
    };
    let not_netns = |what: String| NetnsError::NotNetns {
        path: path.to_string(),
        what,
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let m = f.metadata().map_err(io_err)?;
    if !m.file_type().is_file() {
        // nsfs files are regular files (mode 0444): anything else is not one.
        return Err(not_netns(kind_of(m.file_type()).to_string()));
    }
    if !on_nsfs(&f).map_err(io_err)? {
        return Err(not_netns("a regular file".to_string()));
    }
    let t = ns_type(&f).map_err(io_err)?;
    if t != libc::CLONE_NEWNET {
        return Err(not_netns(format!("a {} namespace", ns_type_name(t))));
    }
    Ok(NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// [`netns_id`], and not one of `host` (the node's own namespaces).
pub fn check_pod_netns(path: &str, host: &[HostNs]) -> Result<NsId, NetnsError> {
    let id = netns_id(path)?;
    if let Some(h) = host.iter().find(|h| h.id == id) {
        return Err(NetnsError::Host {
            path: path.to_string(),
            what: h.what,
        });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_a_netns_and_host() {
        let id = netns_id("/proc/self/ns/net").unwrap();
        assert_eq!(id, NsId::of(Path::new("/proc/self/ns/net")).unwrap());
        let host = host_namespaces();
        assert!(host.iter().any(|h| h.id == id), "{host:?}");
        match check_pod_netns("/proc/self/ns/net", &host) {
            Err(NetnsError::Host { what, .. }) => assert!(what.contains("this process")),
            other => panic!("{other:?}"),
        }
        // The same namespace reached through another path is still refused.
        let tid = format!("/proc/{}/ns/net", std::process::id());
        assert!(matches!(
            check_pod_netns(&tid, &host),
            Err(NetnsError::Host { .. })
        ));
        // Not in the host list: accepted.
        assert_eq!(check_pod_netns("/proc/self/ns/net", &[]).unwrap(), id);
    }

    #[test]
    fn other_things_are_refused() {
        let dir = std::env::temp_dir().join(format!("fp-netns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-netns");
        std::fs::write(&file, b"").unwrap();
        let cases = [
            (file.display().to_string(), "a regular file"),
            (dir.display().to_string(), "a directory"),
            ("/proc/self/ns/mnt".to_string(), "a mnt namespace"),
            ("/proc/self/ns/uts".to_string(), "a uts namespace"),
            ("/dev/null".to_string(), "a character device"),
        ];
        for (path, what) in cases {
            match netns_id(&path) {
                Err(e @ NetnsError::NotNetns { .. }) => {
                    assert!(e.to_string().contains(what), "{path}: {e}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        if nix_mkfifo(&fifo) {
            // Opened non-blocking: refused at once instead of hanging.
            assert!(matches!(
                netns_id(&fifo.display().to_string()),
                Err(NetnsError::NotNetns { .. })
            ));
        }
        assert!(matches!(
            netns_id(&dir.join("missing").display().to_string()),
            Err(NetnsError::Missing { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn nix_mkfifo(path: &Path) -> bool {
        std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    }
}
