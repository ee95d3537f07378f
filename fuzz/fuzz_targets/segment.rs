//! A segment file: opening, reading every series and verifying never panic.
#![no_main]
use chronicle_engine::segment::Segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seg-000001.seg");
    std::fs::write(&path, data).expect("write");
    if let Ok(segment) = Segment::open(&path) {
        let series: Vec<_> = segment.series().collect();
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for id in series {
            for block in segment.blocks_of(id) {
                let _ = segment.read_block(block, i64::MIN, i64::MAX, &mut ts, &mut vals);
            }
        }
        let _ = segment.verify();
    }
});
