//! Process-level system calls the agent needs around packet I/O: real-time scheduling of
//! the engine worker and giving freed heap back to the system. They live here so that the
//! agent itself stays free of `unsafe` (the io crate is the system-call layer).

/// Puts the calling thread under `SCHED_FIFO` at `priority` (clamped to 1..=99).
///
/// # Errors
/// The kernel's refusal (no `CAP_SYS_NICE`, or a cgroup without real-time budget).
pub fn set_realtime(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority.clamp(1, 99)),
    };
    // SAFETY: `param` is a live, initialised sched_param the call only reads; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives the heap's free pages back to the system (glibc `malloc_trim`); a no-op on other
/// C libraries.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it
    // takes no pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn realtime_is_set_or_refused_with_a_reason() {
        // Run on a thread of its own so the test runner's threads keep their policy.
        let r = std::thread::spawn(|| {
            let r = super::set_realtime(1);
            // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (r.map_err(|e| e.raw_os_error()), policy)
        })
        .join()
        .expect("thread");
        match r {
            (Ok(()), policy) => assert_eq!(policy, libc::SCHED_FIFO),
            (Err(code), policy) => {
                assert!(code.is_some(), "a refusal carries the kernel's error code");
                assert_ne!(policy, libc::SCHED_FIFO);
            }
        }
    }
}
