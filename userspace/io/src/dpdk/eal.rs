//! DPDK's Environment Abstraction Layer: initialised once per process from an
//! [`EalConfig`].

use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

use super::ffi;
use crate::IoError;

/// How to initialise DPDK's EAL (once per process; see [`Eal::init`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EalConfig {
    /// The CPUs the EAL may use, as an lcore list (`-l`), e.g. `"0"` or `"0-3"`. The
    /// backend does not launch EAL lcore threads (the engine's workers poll), so this
    /// mainly sizes per-lcore state; the calling thread's CPU affinity is restored after
    /// initialisation.
    pub cores: String,
    /// Memory the EAL reserves at start-up, in MiB (`-m`).
    pub memory_mb: u32,
    /// Use ordinary pages instead of hugepages (`--no-huge`): for tests and virtual
    /// devices; a physical NIC needs hugepages (DMA to IOVA-contiguous memory).
    pub no_huge: bool,
    /// Name of this process's DPDK runtime files (`--file-prefix`); unique per process
    /// when several DPDK processes share a host (each test binary uses its PID).
    pub file_prefix: String,
    /// PCI devices the EAL may take (`-a`, bound to vfio-pci beforehand); empty: no PCI
    /// scan at all (`--no-pci`), only virtual devices.
    pub pci_allow: Vec<String>,
    /// DPDK's log level (`--log-level`), e.g. `"warning"` or `"debug"`.
    pub log_level: String,
    /// Further EAL arguments, passed last and verbatim.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            cores: "0".into(),
            memory_mb: 256,
            no_huge: false,
            file_prefix: "ferroplane".into(),
            pci_allow: Vec::new(),
            log_level: "warning".into(),
            extra_args: Vec::new(),
        }
    }
}

impl EalConfig {
    /// The configuration tests use: `--no-huge`, `memory_mb` MiB, no PCI, a file prefix
    /// unique to this process.
    pub fn for_tests(memory_mb: u32) -> Self {
        EalConfig {
            memory_mb,
            no_huge: true,
            file_prefix: format!("fp{}", std::process::id()),
            ..EalConfig::default()
        }
    }

    /// The EAL's argument vector (program name first).
    ///
    /// Always `--no-shconf` (no multi-process support, no shared runtime files) and
    /// `--no-telemetry` (no telemetry socket); `--in-memory` is not used because it
    /// conflicts with `--no-huge`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "ferroplane".to_string(),
            "-l".into(),
            self.cores.clone(),
            "-m".into(),
            self.memory_mb.to_string(),
            "--file-prefix".into(),
            self.file_prefix.clone(),
            "--no-shconf".into(),
            "--no-telemetry".into(),
            format!("--log-level={}", self.log_level),
        ];
        if self.no_huge {
            a.push("--no-huge".into());
        }
        if self.pci_allow.is_empty() {
            a.push("--no-pci".into());
        }
        for dev in &self.pci_allow {
            a.push("-a".into());
            a.push(dev.clone());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Proof that the EAL is initialised in this process (DPDK objects need it).
#[derive(Clone, Debug)]
pub struct Eal {
    args: Vec<String>,
}

/// The arguments the EAL was initialised with, or why it failed (it cannot be retried).
static EAL: Mutex<Option<Result<Vec<String>, String>>> = Mutex::new(None);

impl Eal {
    /// Initialises the EAL with `config`, or returns the running EAL when this process
    /// already initialised it with the same arguments. DPDK allows one initialisation per
    /// process: a different configuration afterwards, or any call after a failed
    /// initialisation, is an error.
    pub fn init(config: &EalConfig) -> Result<Eal, IoError> {
        let args = config.args();
        let mut state = EAL.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            Some(Ok(running)) if *running == args => return Ok(Eal { args }),
            Some(Ok(running)) => {
                return Err(IoError::Config(format!(
                    "dpdk: the EAL of this process already runs with {running:?}, not {args:?}"
                )))
            }
            Some(Err(e)) => {
                return Err(IoError::Config(format!(
                    "dpdk: EAL initialisation failed earlier in this process: {e}"
                )))
            }
            None => {}
        }
        let result = init_eal(&args);
        *state = Some(result.clone().map(|()| args.clone()));
        result
            .map(|()| Eal { args })
            .map_err(|e| IoError::Config(format!("dpdk: EAL initialisation: {e}")))
    }

    /// The arguments the EAL runs with.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

fn init_eal(args: &[String]) -> Result<(), String> {
    let owned: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("argument {a:?} contains NUL")))
        .collect::<Result<_, _>>()?;
    // rte_eal_init may permute argv; it gets its own array of pointers into `owned`.
    let mut argv: Vec<*mut c_char> = owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let argc = i32::try_from(owned.len()).map_err(|_| "too many EAL arguments".to_string())?;
    let affinity = Affinity::of_this_thread();
    // SAFETY: argv holds argc valid NUL-terminated strings (kept alive by `owned` for
    // the whole call) followed by NULL; rte_eal_init only reorders the pointer array and
    // does not keep it. The EAL mutex serialises calls, and this runs at most once.
    let rc = unsafe { ffi::fp_dpdk_eal_init(argc, argv.as_mut_ptr()) };
    // The EAL pins the calling thread to its main lcore; the caller's threads are not
    // EAL lcores, so give it its CPUs back.
    if let Some(a) = affinity {
        a.restore();
    }
    if rc < 0 {
        let err = ffi::errno();
        return Err(format!("{} (rte_errno {err})", ffi::strerror(err)));
    }
    // With --no-shconf the EAL still makes its runtime directory
    // (/var/run/dpdk/<file-prefix>) but leaves it empty and never uses it: remove it
    // (only if empty) so that runs leave nothing behind.
    // SAFETY: returns a pointer to a NUL-terminated string in the EAL's static
    // configuration, valid for the process's life; copied at once.
    let dir = unsafe {
        let p = ffi::fp_dpdk_runtime_dir();
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    };
    if let Some(dir) = dir.filter(|d| !d.is_empty()) {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// A thread's CPU affinity mask.
struct Affinity(libc::cpu_set_t);

impl Affinity {
    fn of_this_thread() -> Option<Affinity> {
        // SAFETY: cpu_set_t is plain data (all-zero is an empty set); sched_getaffinity
        // writes at most size_of::<cpu_set_t>() bytes into it; 0 means this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (rc == 0).then_some(Affinity(set))
        }
    }

    fn restore(&self) {
        // SAFETY: the set was filled by sched_getaffinity and its size is passed; 0 means
        // this thread. Failure leaves the EAL's pinning, which is harmless.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_args_have_no_huge_no_pci_and_a_unique_prefix() {
        let args = EalConfig::for_tests(128).args();
        assert_eq!(args[0], "ferroplane");
        assert!(args.contains(&"--no-huge".to_string()));
        assert!(args.contains(&"--no-pci".to_string()));
        assert!(!args.contains(&"--in-memory".to_string()));
        let i = args.iter().position(|a| a == "--file-prefix").unwrap();
        assert_eq!(args[i + 1], format!("fp{}", std::process::id()));
        let i = args.iter().position(|a| a == "-m").unwrap();
        assert_eq!(args[i + 1], "128");
    }

    #[test]
    fn pci_devices_are_allow_listed() {
        let config = EalConfig {
            pci_allow: vec!["0000:01:00.0".into()],
            cores: "0-1".into(),
            ..EalConfig::default()
        };
        let args = config.args();
        assert!(!args.contains(&"--no-pci".to_string()));
        assert!(!args.contains(&"--no-huge".to_string()));
        assert!(args.windows(2).any(|w| w == ["-a", "0000:01:00.0"]));
        assert!(args.windows(2).any(|w| w == ["-l", "0-1"]));
    }
}
