//! The cost of the copy when a frame leaves through the other backend of a [`HybridIo`]
//! (a pod's AF_XDP frame out of the DPDK uplink, or the reverse): 256-packet vectors
//! received on a pods' port and sent on another pods' port (no copy) or on the uplink
//! (one copy each), 64- and 1500-byte packets. Memory backends on both sides, so only the
//! combined backend's own work is measured.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroplane_io::{Desc, HybridIo, MemIo, PacketIo};

const UPLINK: u16 = 4;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("hybrid");
    group.throughput(Throughput::Elements(256));
    for len in [64usize, 1500] {
        for (name, out) in [("same_pool", 1u16), ("copy_to_uplink", UPLINK)] {
            let mut io: HybridIo<MemIo, MemIo> = HybridIo::new(MemIo::new(4096, 2048, 2));
            io.attach_uplink(MemIo::new(4096, 2176, 1), UPLINK, None)
                .unwrap();
            io.pods_mut().set_rx_template(0, &vec![0x5a; len]);
            io.pods_mut().set_tx_sink(1, true);
            io.uplink_mut().unwrap().set_tx_sink(0, true);
            let mut descs = [Desc::default(); 256];
            group.bench_with_input(BenchmarkId::new(name, len), &len, |b, _| {
                b.iter(|| {
                    let n = io.rx_burst(0, &mut descs);
                    io.tx_burst(out, &descs[..n])
                })
            });
            assert_eq!(io.pods().free_frames(), 4096);
            assert_eq!(io.uplink().unwrap().free_frames(), 4096);
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
