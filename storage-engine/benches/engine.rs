//! Engine throughput on a plain directory, one writer thread, default
//! settings: line-protocol ingest, bytes per point for a regular 10-second
//! gauge workload, aggregating scan speed, and peak memory.
//!
//! Run: cargo bench -p chronicle-engine --bench engine [-- POINTS]
//! (POINTS defaults to 10,000,000; DATA_DIR=path runs on that directory,
//! e.g. a chronicle mount, instead of a temporary one.)

use std::time::Instant;

use chronicle_engine::{Aggregate, Engine, Options, Query};

const HOSTS: usize = 100;
const STEP: i64 = 10_000_000_000;
const START: i64 = 1_764_403_200_000_000_000;

/// One sample of every series at step `i`: CPU in tenths of a percent
/// moving smoothly, memory in whole MiB creeping upwards, as collectors
/// report them.
fn sample(i: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let ts = START + i as i64 * STEP;
    for h in 0..HOSTS {
        let phase = (i as f64 / 360.0 + h as f64).sin();
        let cpu = ((20.0 + (h % 7) as f64 * 5.0 + 15.0 * phase) * 10.0).round() / 10.0;
        let mem = (4096.0 + (h % 5) as f64 * 512.0 + (i / 30) as f64).round();
        let _ = writeln!(
            out,
            "cpu_usage,host=host-{h:03},dc=dc-{} value={cpu} {ts}",
            h % 3
        );
        let _ = writeln!(
            out,
            "mem_used,host=host-{h:03},dc=dc-{} value={mem} {ts}",
            h % 3
        );
    }
}

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

fn main() {
    let points: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("DATA_DIR")
        .map_or_else(|| temp.path().join("db"), std::path::PathBuf::from);
    let engine = Engine::open(&dir, Options::default()).expect("open");
    let per_sample = 2 * HOSTS as u64;
    let samples = points / per_sample;
    // Batches of 50 samples (10,000 lines), generated up front per batch
    // but timed only inside the engine.
    let mut batch = Vec::with_capacity(1 << 20);
    let mut engine_secs = 0.0;
    let mut written = 0u64;
    let mut i = 0;
    while i < samples {
        batch.clear();
        for s in i..(i + 50).min(samples) {
            sample(s, &mut batch);
        }
        let t = Instant::now();
        written += engine.write_lines(&batch, 1).expect("write");
        engine_secs += t.elapsed().as_secs_f64();
        i += 50;
    }
    let t = Instant::now();
    engine.flush().expect("flush");
    let flush_secs = t.elapsed().as_secs_f64();
    println!("ingest: {written} points in {engine_secs:.2} s (+{flush_secs:.2} s final flush): {:.0} points/s",
        written as f64 / (engine_secs + flush_secs));
    println!("peak RSS after ingest: {} MiB", peak_rss_kib() / 1024);
    let t = Instant::now();
    engine.compact().expect("compact");
    println!("compaction: {:.2} s", t.elapsed().as_secs_f64());
    let stats = engine.stats().expect("stats");
    println!(
        "on disk: {} bytes for {} points: {:.3} bytes per point ({} segments)",
        stats.bytes_on_disk, stats.points, stats.bytes_per_point, stats.segments
    );
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
    println!("peak RSS at the end: {} MiB", peak_rss_kib() / 1024);
    engine.close().expect("close");
}
