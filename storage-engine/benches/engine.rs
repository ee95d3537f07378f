//! The engine on a metrics workload, one writer thread, default settings:
//! line-protocol ingest, bytes per point after compaction, aggregating scan
//! speed and peak memory; then the same for full-precision random-walk
//! floats, next to what format version 1 (Gorilla, uncompressed) would
//! have stored for them.
//!
//! The metrics workload is chronicle_engine::workload's (deterministic):
//! 300 series at a 10-second interval, CPU, memory and a request counter,
//! then a late batch that rewrites 1 % of the CPU points (last write wins).
//!
//! Run: cargo bench -p chronicle-engine --bench engine [-- POINTS]
//! (POINTS defaults to 10,000,000; DATA_DIR=path runs on that directory,
//! e.g. a chronicle mount, instead of a temporary one.)

use std::io::Write;
use std::time::Instant;

use chronicle_engine::workload::{Rng, Workload, HOSTS, START, STEP};
use chronicle_engine::{gorilla, Aggregate, Engine, Options, Query};

/// One sample's points: three series per host.
const PER_SAMPLE: u64 = HOSTS as u64 * 3;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Writes `batch` and returns (points, seconds inside the engine).
fn timed_write(engine: &Engine, batch: &[u8]) -> (u64, f64) {
    let t = Instant::now();
    let n = engine.write_lines(batch, 1).expect("write");
    (n, t.elapsed().as_secs_f64())
}

fn metrics_workload(engine: &Engine, points: u64) {
    let samples = points / PER_SAMPLE;
    let mut workload = Workload::new();
    // Batches of 50 samples (15,000 lines), generated outside the timing.
    let mut batch = Vec::with_capacity(1 << 20);
    let (mut engine_secs, mut written) = (0.0, 0u64);
    let mut i = 0;
    while i < samples {
        batch.clear();
        workload.next_lines(50.min(samples - i), &mut batch);
        let (n, secs) = timed_write(engine, &batch);
        written += n;
        engine_secs += secs;
        i += 50;
    }
    let t = Instant::now();
    engine.flush().expect("flush");
    let flush_secs = t.elapsed().as_secs_f64();
    println!(
        "ingest: {written} points in {engine_secs:.2} s (+{flush_secs:.2} s final flush): {:.0} points/s",
        written as f64 / (engine_secs + flush_secs)
    );
    println!("peak RSS after ingest: {} MiB", peak_rss_kib() / 1024);
    // The late corrections: new values for old timestamps.
    batch.clear();
    let rewritten = workload.rewrites(&mut batch);
    timed_write(engine, &batch);
    let t = Instant::now();
    engine.compact().expect("compact");
    println!(
        "compaction (after {rewritten} rewrites): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let stats = engine.stats().expect("stats");
    assert_eq!(stats.points, written, "a rewrite replaces, it does not add");
    println!(
        "metrics workload on disk: {} bytes for {} points: {:.3} bytes per point ({} segments)",
        stats.bytes_on_disk, stats.points, stats.bytes_per_point, stats.segments
    );
    let mut q = Query::new("cpu_usage");
    q.window = Some((3_600_000_000_000, Aggregate::Max));
    let rewritten_seen = match engine.query(&q).expect("query") {
        chronicle_engine::QueryResult::Aggregated(groups) => groups[0]
            .windows
            .iter()
            .filter(|w| w.value == chronicle_engine::workload::REWRITTEN_VALUE)
            .count(),
        chronicle_engine::QueryResult::Raw(_) => 0,
    };
    assert!(rewritten_seen > 0, "the rewrites are read back");
    for (name, agg, group) in [
        ("mean per hour, all series", Aggregate::Mean, None),
        ("max per hour by host", Aggregate::Max, Some("host")),
    ] {
        let mut q = Query::new("cpu_usage");
        q.window = Some((3_600_000_000_000, agg));
        q.group_by = group.map(str::to_string);
        let t = Instant::now();
        let result = engine.query(&q).expect("query");
        let secs = t.elapsed().as_secs_f64();
        let n = result.points();
        println!(
            "scan ({name}): {n} points in {secs:.3} s: {:.0} points/s",
            n as f64 / secs
        );
    }
}

/// Full-precision random walks: what decimals cannot represent. Returns
/// the bytes format version 1 would have stored (Gorilla timestamps and
/// values, 32-byte block header, 4-byte checksum, 32-byte index entry).
fn random_walk_workload(engine: &Engine, points: u64) -> u64 {
    const SERIES: u64 = 100;
    let mut rng = Rng(7);
    let mut walks = vec![100.0f64; SERIES as usize];
    let samples = points / SERIES;
    let mut per_series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); SERIES as usize];
    let mut batch = Vec::with_capacity(1 << 20);
    for i in 0..samples {
        let ts = START + i as i64 * STEP;
        for (s, x) in walks.iter_mut().enumerate() {
            *x += (rng.next_u64() as f64 / u64::MAX as f64 - 0.5) * 0.37;
            // `{x:?}` prints the shortest text that parses back exactly.
            let _ = writeln!(batch, "walk,series=s{s} value={x:?} {ts}");
            per_series[s].push((ts, *x));
        }
        if batch.len() > 1 << 20 {
            engine.write_lines(&batch, 1).expect("write");
            batch.clear();
        }
    }
    engine.write_lines(&batch, 1).expect("write");
    engine.compact().expect("compact");
    // Format 1: per hour partition and series, blocks of up to 1,000.
    let per_hour = (3_600_000_000_000 / STEP) as usize;
    let mut v1 = 0u64;
    for points in &per_series {
        for block in points.chunks(per_hour) {
            let (ts, vals): (Vec<i64>, Vec<f64>) = block.iter().copied().unzip();
            v1 += (gorilla::encode_timestamps(&ts).len()
                + gorilla::encode_values(&vals).len()
                + 32
                + 4
                + 32) as u64;
        }
    }
    v1
}

fn main() {
    let points: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let temp = tempfile::tempdir().expect("tempdir");
    let base = std::env::var_os("DATA_DIR")
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let engine = Engine::open(&base.join("metrics"), Options::default()).expect("open");
    metrics_workload(&engine, points);
    println!("peak RSS at the end: {} MiB", peak_rss_kib() / 1024);
    engine.close().expect("close");

    let walk_points = (points / 10).max(100_000);
    let engine = Engine::open(&base.join("walk"), Options::default()).expect("open");
    let v1_bytes = random_walk_workload(&engine, walk_points);
    let stats = engine.stats().expect("stats");
    let segment_bytes: u64 = std::fs::read_dir(base.join("walk"))
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "random walk: {} points, segments {:.3} bytes per point (format 1 would store {:.3})",
        stats.points,
        segment_bytes as f64 / stats.points as f64,
        v1_bytes as f64 / stats.points as f64
    );
    engine.close().expect("close");
}
