//! `BPF_PROG_TEST_RUN` for XDP programs through the raw `bpf(2)` syscall
//! (aya 0.14 has no API for it).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::programs::ProgramFd;

/// `BPF_PROG_TEST_RUN` from linux/bpf.h.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// The kernel's limit on one test frame is a page minus headroom/tailroom;
/// outputs never exceed it.
const MAX_OUTPUT: usize = 4096;

/// `struct xdp_md`, the context of XDP programs (ctx_in/ctx_out).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn len_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))
}

/// Runs the XDP program `prog` once on `frame`; returns (action, output frame).
pub(crate) fn xdp(
    prog: &ProgramFd,
    frame: &[u8],
    ingress_ifindex: u32,
    rx_queue_index: u32,
) -> io::Result<(u32, Vec<u8>)> {
    let mut output = vec![0u8; frame.len().max(MAX_OUTPUT)];
    let ctx_in = XdpMd {
        data: 0,
        data_end: len_u32(frame.len())?,
        ingress_ifindex,
        rx_queue_index,
        ..XdpMd::default()
    };
    let mut ctx_out = XdpMd::default();
    let prog_fd = u32::try_from(prog.as_fd().as_raw_fd())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad program fd"))?;
    let mut attr = TestRunAttr {
        prog_fd,
        data_size_in: len_u32(frame.len())?,
        data_size_out: len_u32(output.len())?,
        data_in: frame.as_ptr() as u64,
        data_out: output.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: len_u32(size_of::<XdpMd>())?,
        ctx_size_out: len_u32(size_of::<XdpMd>())?,
        ctx_in: &raw const ctx_in as u64,
        ctx_out: &raw mut ctx_out as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.test` (unused tail zeroed) of the
    // size passed; data_in/ctx_in point to live buffers of the given sizes
    // and data_out/ctx_out to live, writable ones the kernel fills up to
    // data_size_out/ctx_size_out. All outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel copies from data_meta; ctx_out.data is the metadata length
    // (0 unless the program added metadata).
    let out_len = (attr.data_size_out as usize).min(output.len());
    output.truncate(out_len);
    let skip = (ctx_out.data as usize).min(output.len());
    output.drain(..skip);
    Ok((attr.retval, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_uapi() {
        // struct { ... } test in union bpf_attr: 76 bytes of fields, 8-aligned.
        assert_eq!(size_of::<TestRunAttr>(), 80);
        assert_eq!(std::mem::offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(std::mem::offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(size_of::<XdpMd>(), 24);
    }
}
