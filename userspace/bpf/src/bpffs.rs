//! bpffs mounting and pin directories.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Where bpffs is conventionally mounted.
pub(crate) const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Serialises check-then-mount within this process (tests load in parallel).
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Whether `path` (which must exist) lives on a bpffs.
fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is a valid value (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 or u32 depending on the libc"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The closest existing ancestor of `path` (or `path` itself).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"))
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call;
    // bpffs takes no mount data (null is allowed).
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target_c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount -t bpf bpf {}: {e}", target.display()),
        ));
    }
    Ok(())
}

/// Makes sure `dir` exists on a bpffs, mounting one first if its closest
/// existing ancestor is not on bpffs (e.g. after `ip netns exec`, which
/// gives a fresh /sys): on `/sys/fs/bpf` when `dir` is below it, else on `dir`.
pub(crate) fn prepare(dir: &Path) -> io::Result<()> {
    let _guard = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !is_bpffs(existing_ancestor(dir))? {
        let default = Path::new(DEFAULT_BPFFS);
        let target = if dir.starts_with(default) {
            default
        } else {
            dir
        };
        fs::create_dir_all(target)?;
        if !is_bpffs(target)? {
            mount_bpffs(target)?;
        }
    }
    fs::create_dir_all(dir)
}

/// A directory under `/sys/fs/bpf` used only while loading, so that the two
/// objects share maps through pinning without leaving pins behind. Dropping
/// it removes the pins (the maps live on through their file descriptors).
pub(crate) struct PrivatePinDir {
    path: PathBuf,
}

impl PrivatePinDir {
    pub(crate) fn create() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            Path::new(DEFAULT_BPFFS).join(format!("ferroplane-private-{}-{n}", std::process::id()));
        // bpffs refuses names containing a dot. A leftover from a crashed
        // process with the same pid holds stale maps.
        if path.exists() {
            remove_pins(&path)?;
        }
        prepare(&path)?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn remove_pins(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        fs::remove_file(entry?.path())?;
    }
    fs::remove_dir(dir)
}

impl Drop for PrivatePinDir {
    fn drop(&mut self) {
        // Best effort: a failure leaves an empty-ish directory, not a leak of
        // kernel objects beyond the pins themselves.
        let _ = remove_pins(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_ancestor_walks_up() {
        assert_eq!(
            existing_ancestor(Path::new("/proc/self/no/such/dir")),
            Path::new("/proc/self")
        );
        assert_eq!(existing_ancestor(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn proc_is_not_bpffs() {
        assert!(!is_bpffs(Path::new("/proc")).unwrap());
    }
}
