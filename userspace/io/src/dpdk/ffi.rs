//! The functions of `shim.c` (the C side of this backend), declared by hand.
//!
//! Hand-written rather than bindgen: the shim's ABI is a dozen functions over scalars,
//! pointers and one plain struct ([`RawDesc`]), all defined in `shim.c` next to this file;
//! bindgen would need libclang at build time and would still not bind DPDK's `static
//! inline` fast-path functions (the reason the shim exists). Keep both files in step.

use std::ffi::{c_char, c_int, c_void, CStr};

/// Opaque `struct rte_mempool`.
#[repr(C)]
pub(crate) struct RteMempool {
    _private: [u8; 0],
}

/// Opaque `struct rte_mbuf`.
#[repr(C)]
pub(crate) struct RteMbuf {
    _private: [u8; 0],
}

/// `struct fp_desc` of the shim: a packet `len` bytes long, `offset` bytes into the data
/// buffer of mbuf `buf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawDesc {
    pub buf: u32,
    pub offset: u16,
    pub len: u16,
}

/// Number of counters [`fp_dpdk_port_stats`] writes.
pub(crate) const PORT_STATS: usize = 8;

extern "C" {
    pub(crate) fn fp_dpdk_errno() -> c_int;
    pub(crate) fn fp_dpdk_strerror(err: c_int) -> *const c_char;
    pub(crate) fn fp_dpdk_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    pub(crate) fn fp_dpdk_runtime_dir() -> *const c_char;
    pub(crate) fn fp_dpdk_pool_create(
        name: *const c_char,
        n: u32,
        cache: u32,
        data_room: u16,
        table: *mut *mut RteMbuf,
        buf_addrs: *mut *mut c_void,
    ) -> *mut RteMempool;
    pub(crate) fn fp_dpdk_pool_free(mp: *mut RteMempool);
    pub(crate) fn fp_dpdk_pool_avail(mp: *const RteMempool) -> u32;
    pub(crate) fn fp_dpdk_headroom() -> u16;
    pub(crate) fn fp_dpdk_rx(
        port: u16,
        queue: u16,
        out: *mut RawDesc,
        n: u16,
        chained: *mut u64,
    ) -> u16;
    pub(crate) fn fp_dpdk_tx(
        port: u16,
        queue: u16,
        pkts: *const RawDesc,
        n: u16,
        table: *const *mut RteMbuf,
    ) -> u16;
    pub(crate) fn fp_dpdk_alloc(mp: *mut RteMempool, out: *mut u32, n: u32) -> u32;
    pub(crate) fn fp_dpdk_free(table: *const *mut RteMbuf, idx: *const u32, n: u32);
    pub(crate) fn fp_dpdk_probe(
        devargs: *const c_char,
        name: *const c_char,
        port: *mut u16,
    ) -> c_int;
    pub(crate) fn fp_dpdk_port_start(
        port: u16,
        queues: u16,
        rx_desc: u16,
        tx_desc: u16,
        mp: *mut RteMempool,
        mac: *mut u8,
    ) -> c_int;
    pub(crate) fn fp_dpdk_port_close(port: u16) -> c_int;
    pub(crate) fn fp_dpdk_port_stats(port: u16, out: *mut u64) -> c_int;
}

/// DPDK's text for error number `err` (an errno or one of DPDK's own).
pub(crate) fn strerror(err: c_int) -> String {
    // SAFETY: rte_strerror returns a pointer to a NUL-terminated string, static or in
    // thread-local storage, valid until the next call on this thread; copied at once.
    unsafe {
        let p = fp_dpdk_strerror(err);
        if p.is_null() {
            return format!("error {err}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The calling thread's `rte_errno`.
pub(crate) fn errno() -> c_int {
    // SAFETY: reads a thread-local integer; no arguments.
    unsafe { fp_dpdk_errno() }
}
