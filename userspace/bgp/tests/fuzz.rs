//! The BGP fuzz target (`fuzz/bodies/decode.rs`) on stable, bounded: the captured BIRD and
//! GoBGP messages of `tests/fixtures` as seeds (each under the four flag bytes the target
//! reads first: 4-octet AS, eBGP; and all of them as one stream), the libFuzzer corpus when
//! present (`fuzz/corpus/decode`, not checked in), then deterministic mutations and random
//! inputs (ferroplane-testkit's fuzz driver; budget from FERROPLANE_FUZZ_EXECS and
//! FERROPLANE_FUZZ_SECONDS). A panic fails the test with the input.

use std::path::Path;

use ferroplane_testkit::fuzz;

#[path = "../fuzz/bodies/decode.rs"]
mod decode;

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn fuzz_decode() {
    let messages = fixtures();
    assert!(messages.len() >= 14, "fixtures missing: {}", messages.len());
    let mut seeds = Vec::new();
    for flags in 0u8..4 {
        for m in &messages {
            let mut s = vec![flags];
            s.extend_from_slice(m);
            seeds.push(s);
        }
        let mut stream = vec![flags];
        messages.iter().for_each(|m| stream.extend_from_slice(m));
        seeds.push(stream);
    }
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let r = fuzz::run("bgp::decode", &seeds, Some(&corpus), decode::run);
    assert!(r.execs >= seeds.len() as u64);
}
