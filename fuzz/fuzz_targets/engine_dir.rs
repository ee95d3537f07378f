//! A whole engine directory written by someone else: the input is split
//! into a WAL, a series log, a manifest and a segment; opening, querying and
//! verifying the engine never panic (errors name what is wrong).
#![no_main]
use chronicle_engine::{Engine, Options, Query, SyncPolicy};
use libfuzzer_sys::fuzz_target;

/// Splits `data` at the lengths its first bytes give.
fn parts(data: &[u8]) -> [&[u8]; 4] {
    let mut out = [&[][..]; 4];
    let (lens, mut rest) = data.split_at(data.len().min(4));
    for (i, slot) in out.iter_mut().enumerate() {
        let len = if i == 3 {
            rest.len()
        } else {
            (usize::from(*lens.get(i).unwrap_or(&0)) * 16).min(rest.len())
        };
        let (part, tail) = rest.split_at(len);
        *slot = part;
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let [wal, series, manifest, segment] = parts(data);
    for (name, bytes) in [
        ("wal-000001.log", wal),
        ("series.log", series),
        ("MANIFEST", manifest),
        ("seg-000002.seg", segment),
    ] {
        if !bytes.is_empty() {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
    }
    let options = Options {
        sync: SyncPolicy::Never,
        ..Options::default()
    };
    if let Ok(engine) = Engine::open(dir.path(), options) {
        let _ = engine.verify();
        let query = Query {
            metric: "cpu".into(),
            filters: Vec::new(),
            start: i64::MIN,
            end: i64::MAX,
            window: None,
            group_by: None,
        };
        let _ = engine.query(&query);
    }
});
