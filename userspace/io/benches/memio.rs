//! MemIo fast paths: template receive + sink transmit of 256-packet vectors.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroplane_io::{Desc, MemIo, PacketIo};

fn rx_tx_vector(c: &mut Criterion) {
    let mut io = MemIo::new(4096, 2048, 2);
    io.set_rx_template(0, &[0x5a; 64]);
    io.set_tx_sink(1, true);
    let mut descs = [Desc::default(); 256];
    let mut group = c.benchmark_group("memio");
    group.throughput(Throughput::Elements(256));
    group.bench_function("rx_template_tx_sink_256", |b| {
        b.iter(|| {
            let n = io.rx_burst(0, &mut descs);
            io.tx_burst(1, &descs[..n])
        })
    });
    group.finish();
    assert_eq!(io.free_frames(), 4096);
}

criterion_group!(benches, rx_tx_vector);
criterion_main!(benches);
