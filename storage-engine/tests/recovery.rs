//! Durability and recovery: torn WAL tails, corrupt segments, snapshots,
//! and a writer killed with SIGKILL at random moments.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chronicle_engine::{Engine, Options, Point, Query, QueryResult, SeriesKey, SyncPolicy};
use rand::Rng;

fn point(i: i64) -> Point {
    Point {
        series: SeriesKey::new("load", vec![("host".into(), format!("h{}", i % 3))]),
        timestamp: 1_700_000_000_000_000_000 + i * 1_000_000_000,
        value: i as f64,
    }
}

fn count(e: &Engine, metric: &str) -> u64 {
    e.query(&Query::new(metric)).expect("query").points()
}

fn no_flush() -> Options {
    Options {
        sync: SyncPolicy::Always,
        memtable_points: usize::MAX,
        retention: None,
        ..Options::default()
    }
}

fn wal_file(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("wal-"))
        })
        .expect("a WAL file")
}

// Protects: a WAL cut mid-record, or with garbage appended, reopens with
// every whole record and nothing else.
#[test]
fn torn_and_garbage_wal_tails_recover() {
    for damage in ["cut", "garbage"] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let e = Engine::open(dir.path(), no_flush()).expect("open");
            for i in 0..10 {
                e.write(&[point(i)]).expect("write");
            }
            std::mem::forget(e); // no close: the WAL is all there is
        }
        let wal = wal_file(dir.path());
        let mut bytes = std::fs::read(&wal).expect("read wal");
        match damage {
            "cut" => bytes.truncate(bytes.len() - 5),
            _ => bytes.extend_from_slice(&[0x5A; 100]),
        }
        std::fs::write(&wal, &bytes).expect("damage");
        // The forgotten engine still holds the lock in this process; a
        // lock is per open file description, so release by removing it.
        std::fs::remove_file(dir.path().join("LOCK")).expect("unlock");
        let e = Engine::open(dir.path(), no_flush()).expect("reopen");
        let expect = if damage == "cut" { 9 } else { 10 };
        assert_eq!(count(&e, "load"), expect, "{damage}");
        e.write(&[point(100)]).expect("write after recovery");
        e.close().expect("close");
        let e = Engine::open(dir.path(), no_flush()).expect("reopen again");
        assert_eq!(count(&e, "load"), expect + 1, "{damage}");
    }
}

// Protects: a damaged record in the middle of the WAL is an error, not loss.
#[test]
fn corrupt_wal_middle_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let e = Engine::open(dir.path(), no_flush()).expect("open");
        for i in 0..10 {
            e.write(&[point(i)]).expect("write");
        }
        std::mem::forget(e);
    }
    std::fs::remove_file(dir.path().join("LOCK")).expect("unlock");
    let wal = wal_file(dir.path());
    let mut bytes = std::fs::read(&wal).expect("read");
    bytes[40] ^= 0xFF;
    std::fs::write(&wal, &bytes).expect("write");
    let err = Engine::open(dir.path(), no_flush()).err().expect("refused");
    assert!(
        err.to_string().contains("wal-") && err.to_string().contains("corrupt"),
        "{err}"
    );
}

/// Writes `points` points to a new database in `dir`, closes it, and
/// returns its one segment file.
fn one_segment(dir: &std::path::Path, points: i64) -> std::path::PathBuf {
    let e = Engine::open(dir, no_flush()).expect("open");
    e.write(&(0..points).map(point).collect::<Vec<_>>())
        .expect("write");
    e.close().expect("close");
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("segment")
}

// Protects: a flipped byte in a segment is an error naming the file.
#[test]
fn flipped_segment_byte_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path(), 5000);
    let mut bytes = std::fs::read(&seg).expect("read");
    // Inside the first block, past its header.
    bytes[chronicle_engine::segment::HEADER_LEN + 3] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let e = Engine::open(dir.path(), no_flush()).expect("open (the index is intact)");
    let err = e
        .query(&Query::new("load"))
        .expect_err("corruption detected");
    let text = err.to_string();
    assert!(
        text.contains(&seg.display().to_string()) && text.contains("checksum"),
        "{text}"
    );
}

// Protects: a snapshot opens as a database with the same points.
#[test]
fn snapshot_opens_as_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&(0..3000).map(point).collect::<Vec<_>>())
        .expect("write");
    let dest = dir.path().join("snap");
    e.snapshot(&dest).expect("snapshot");
    e.write(&[point(99_999)]).expect("write after");
    let copy = Engine::open(&dest, no_flush()).expect("open snapshot");
    assert_eq!(count(&copy, "load"), 3000);
}

const CHILD_ENV: &str = "CHRONICLE_CRASH_CHILD_DIR";

/// Not a test on its own: the writer the crash test runs and kills.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let e = Engine::open(
        std::path::Path::new(&dir),
        Options {
            sync: SyncPolicy::Always,
            memtable_points: 5000,
            retention: None,
            ..Options::default()
        },
    )
    .expect("child open");
    let start: i64 = std::env::var("CHRONICLE_CRASH_START")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut i = start;
    loop {
        let batch: Vec<Point> = (i..i + 50).map(point).collect();
        e.write(&batch).expect("child write");
        i += 50;
        // Acknowledged: only now may the parent count on these points.
        println!("acked {i}");
    }
}

// Protects: with sync=always, every acknowledged point survives SIGKILL at
// any moment (during writes, flushes and WAL rotation).
#[test]
fn sigkill_loses_no_acknowledged_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::rng();
    let mut acked = 0i64;
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("CHRONICLE_CRASH_START", acked.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let kill_after = Duration::from_millis(rng.random_range(50..400));
        let started = std::time::Instant::now();
        let mut lines = BufReader::new(stdout).lines();
        let mut last = acked;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("acked ") {
                last = n.parse().expect("number");
            }
            if started.elapsed() >= kill_after {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        // Lines still buffered in the pipe were acknowledged too.
        for line in lines.map_while(|l| l.ok()) {
            if let Some(n) = line.strip_prefix("acked ") {
                last = n.parse().expect("number");
            }
        }
        acked = last;
        let e = Engine::open(dir.path(), no_flush()).expect("reopen after SIGKILL");
        let got = count(&e, "load");
        assert!(
            got >= acked as u64,
            "round {round}: {got} points survive, {acked} were acknowledged"
        );
        // Resume numbering after everything present (unacknowledged but
        // durable points may exist).
        acked = got as i64;
        e.close().expect("close");
    }
    assert!(acked > 0, "the writer acknowledged nothing");
}

const HOUR: i64 = 3_600_000_000_000;

/// Now, in nanoseconds since the epoch.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// A point of `metric`, tagged `host`, at `ts`.
fn host_point(metric: &str, host: &str, ts: i64) -> Point {
    Point {
        series: SeriesKey::new(metric, vec![("host".into(), host.into())]),
        timestamp: ts,
        value: 1.0,
    }
}

// Protects: retention drops whole hour partitions older than the limit and
// keeps the rest, across a reopen.
#[test]
fn retention_drops_old_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = now_nanos();
    let at = |ts: i64| host_point("temp", "a", ts);
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&[at(now - 50 * HOUR), at(now - 49 * HOUR), at(now - HOUR / 2)])
        .expect("write");
    e.flush().expect("flush");
    assert_eq!(
        e.apply_retention(24 * HOUR).expect("retention").partitions,
        2
    );
    assert_eq!(count(&e, "temp"), 1);
    e.close().expect("close");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(count(&e, "temp"), 1);
    let segments = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert_eq!(segments, 1, "dropped partitions' files are deleted");
}

/// The series of `metric` a raw query finds, each with its points' count.
fn series_counts(e: &Engine, metric: &str) -> Vec<(String, usize)> {
    let QueryResult::Raw(series) = e.query(&Query::new(metric)).expect("query") else {
        panic!("a raw query");
    };
    series
        .iter()
        .map(|s| {
            let tags = s.tags.iter().map(|(k, v)| format!(",{k}={v}"));
            (
                format!("{}{}", s.metric, tags.collect::<String>()),
                s.points.len(),
            )
        })
        .collect()
}

// Protects: retention forgets the series it leaves without points (out of
// memory and out of `series.log`, whose stale rewrite a crash left is
// removed), keeps those with points in a segment or only in memory, and a
// forgotten series written again after reopening (its id may be given to
// another series by then) holds only its new points, after a crash too.
#[test]
fn retention_forgets_the_series_it_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = now_nanos();
    let at = host_point;
    let (old, recent) = (now - 50 * HOUR, now - HOUR / 2);
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&[
        at("temp", "old", old),
        at("temp", "both", old),
        at("temp", "both", recent),
        at("temp", "new", recent),
        at("gone", "old", old),
    ])
    .expect("write");
    e.flush().expect("flush");
    e.write(&[at("temp", "in-memory", old)]).expect("write");
    let dropped = e.apply_retention(24 * HOUR).expect("retention");
    assert_eq!((dropped.partitions, dropped.series), (1, 2));
    let kept = vec![
        ("temp,host=both".to_string(), 1),
        ("temp,host=in-memory".to_string(), 1),
        ("temp,host=new".to_string(), 1),
    ];
    assert_eq!(series_counts(&e, "temp"), kept);
    let stats = e.stats().expect("stats");
    assert_eq!((stats.series, stats.metrics), (3, 1));
    e.close().expect("close");

    std::fs::write(dir.path().join("series.log.tmp"), b"half a rewrite").expect("stale");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert!(!dir.path().join("series.log.tmp").exists());
    assert_eq!(e.stats().expect("stats").series, 3, "the log names no more");
    assert_eq!(series_counts(&e, "temp"), kept);
    assert!(series_counts(&e, "gone").is_empty());
    e.write(&[at("gone", "old", now), at("temp", "old", now)])
        .expect("written again");
    let crashed = copy_dir(dir.path());
    e.close().expect("close");
    for state in [dir.path(), crashed.path()] {
        let e = open_retrying(state, no_flush()).expect("reopen");
        assert_eq!(
            series_counts(&e, "gone"),
            [("gone,host=old".to_string(), 1)]
        );
        let temp = series_counts(&e, "temp");
        assert!(temp.contains(&("temp,host=old".to_string(), 1)), "{temp:?}");
        assert_eq!(e.stats().expect("stats").points, 5);
        e.close().expect("close");
    }
}

// Protects: series that reach a segment while the forgetting reads the
// others (written and flushed, or merged by a compaction) are kept: only
// series no segment and no point in memory holds are forgotten.
#[test]
fn series_flushed_while_forgetting_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&(0..3).map(|s| series_point(s, 1)).collect::<Vec<_>>())
        .expect("first series");
    e.flush().expect("flush");
    let forgotten = e
        .forget_unused_series_with(|| {
            e.write(&(3..6).map(|s| series_point(s, 2)).collect::<Vec<_>>())
                .expect("new series");
            e.flush().expect("flush");
            e.write(&[series_point(6, 3)]).expect("in memory");
            e.compact().expect("compact");
            e.write(&[series_point(7, 4)]).expect("in memory only");
        })
        .expect("forget");
    assert_eq!(forgotten, 0);
    assert_eq!(series_counts(&e, "cpu").len(), 8);
    e.close().expect("close");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(series_counts(&e, "cpu").len(), 8);
}

// Protects: opening with retention forgets the series that a crash left
// in the log after their hours were dropped (the manifest without them
// stored, the series not yet forgotten), though it drops no hour itself.
#[test]
fn series_left_in_the_log_are_forgotten_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, day) = (now_nanos(), 24 * HOUR);
    let at = |host: &str, ts: i64| host_point("temp", host, ts);
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&[at("old", now - 50 * HOUR), at("new", now)])
        .expect("write");
    e.close().expect("close");
    let crashed = copy_dir(dir.path());
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(e.apply_retention(day).expect("retention").series, 1);
    e.close().expect("close");
    // The crash: the new manifest in place, the series log not yet told.
    std::fs::copy(dir.path().join("MANIFEST"), crashed.path().join("MANIFEST"))
        .expect("the manifest without the old hour");

    let with_retention = Options {
        retention: Some(day),
        ..no_flush()
    };
    let e = open_retrying(crashed.path(), with_retention).expect("open after the crash");
    assert_eq!(e.stats().expect("stats").series, 1);
    assert_eq!(
        series_counts(&e, "temp"),
        [("temp,host=new".to_string(), 1)]
    );
}

// Protects: a segment holding a series the series log does not name (here
// its tombstone appended by hand; the engine never writes this) is refused
// at open, naming the segment, rather than its points going to the next
// series given the id.
#[test]
fn a_segment_holding_a_series_the_log_does_not_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&[
        host_point("temp", "a", now_nanos()),
        host_point("temp", "b", now_nanos()),
    ])
    .expect("write");
    e.close().expect("close");
    let tombstone_of_1 = 1u32.to_le_bytes();
    let mut framed = (tombstone_of_1.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&crc32fast::hash(&tombstone_of_1).to_le_bytes());
    framed.extend_from_slice(&tombstone_of_1);
    let log = dir.path().join("series.log");
    let mut bytes = std::fs::read(&log).expect("read");
    bytes.extend_from_slice(&framed);
    std::fs::write(&log, bytes).expect("write");
    let refused = Engine::open(dir.path(), no_flush())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        refused.contains("seg-") && refused.contains("holds series id 1"),
        "{refused}"
    );
}

// Protects: a crash during a flush or compaction (a segment written but not
// yet in the manifest) leaves a consistent database: the stray file is
// removed on open and no point is lost or doubled.
#[test]
fn interrupted_compaction_leaves_a_consistent_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    for round in 0..3 {
        e.write(
            &(round * 100..round * 100 + 100)
                .map(point)
                .collect::<Vec<_>>(),
        )
        .expect("write");
        e.flush().expect("flush");
    }
    e.close().expect("close");
    let segs: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    // What a compaction killed before its manifest swap leaves behind.
    let stray = dir.path().join("seg-999999.seg");
    std::fs::copy(&segs[0], &stray).expect("copy");
    std::fs::write(dir.path().join("MANIFEST.tmp"), b"{ half written").expect("tmp");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert!(!stray.exists() && !dir.path().join("MANIFEST.tmp").exists());
    assert_eq!(count(&e, "load"), 300);
    e.compact().expect("compact");
    assert_eq!(count(&e, "load"), 300);
    assert_eq!(e.stats().expect("stats").points, 300);
}

// Protects: compaction writes the memtable's points straight into the
// merged segments instead of flushing them first: afterwards each partition
// has one segment and nothing is left in memory, a late rewrite wins over
// the point it replaces, a partition only the memtable had points in gets
// a segment, one with a single segment and no new points is left alone,
// and the WAL checkpoint moved past the points (a reopen holds each once).
#[test]
fn compaction_merges_the_memtable_without_flushing_it_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    // Point 2800 starts the second hour partition, 6400 the third.
    e.write(&(0..1000).chain(3000..4000).map(point).collect::<Vec<_>>())
        .expect("write");
    e.flush().expect("flush");
    let rewrite = Point {
        value: -1.0,
        ..point(10)
    };
    e.write(
        &(1000..1100)
            .chain(6400..6500)
            .map(point)
            .collect::<Vec<_>>(),
    )
    .expect("late write");
    e.write(&[rewrite]).expect("rewrite");
    let compacted = e.compact().expect("compact");
    assert_eq!(
        (compacted.partitions, compacted.segments_merged),
        (1, 1),
        "only the first partition merges (its segment with the memtable)"
    );
    let stats = e.stats().expect("stats");
    assert_eq!((stats.segments, stats.points_in_memory), (3, 0));
    let segments = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .count()
    };
    assert_eq!(segments(dir.path()), 3, "the replaced segment is removed");
    assert_eq!(value_of_10(&e), Some(-1.0), "the late rewrite wins");
    assert_eq!(count(&e, "load"), 2200);
    e.close().expect("close");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    let stats = e.stats().expect("stats");
    assert_eq!((stats.points, stats.points_in_memory), (2200, 0));
    assert_eq!(value_of_10(&e), Some(-1.0));
}

// Protects: an hour with several segments and points in the memtable is
// merged once, with them, at the end of a compaction, not first without
// them and then again; the late points win.
#[test]
fn an_hour_with_memtable_points_is_merged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    for part in [0..500, 500..1000] {
        e.write(&part.map(point).collect::<Vec<_>>())
            .expect("write");
        e.flush().expect("flush");
    }
    let rewrite = Point {
        value: -1.0,
        ..point(10)
    };
    e.write(&[rewrite]).expect("late rewrite");
    let compacted = e.compact().expect("compact");
    assert_eq!(
        (compacted.partitions, compacted.segments_merged),
        (1, 2),
        "one merge of the hour's two segments and the memtable"
    );
    let stats = e.stats().expect("stats");
    assert_eq!((stats.segments, stats.points_in_memory), (1, 0));
    assert_eq!(count(&e, "load"), 1000);
    assert_eq!(value_of_10(&e), Some(-1.0), "the late rewrite wins");
}

// Protects: a compaction that fails while the memtable's points are being
// merged gives them back: nothing is lost, nothing is left in the way, and
// the next compaction merges them.
#[test]
fn a_failed_compaction_gives_the_memtable_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&(0..1000).map(point).collect::<Vec<_>>())
        .expect("write");
    e.flush().expect("flush: seg-000001");
    e.write(&(1000..1100).map(point).collect::<Vec<_>>())
        .expect("late write");
    let obstacle = dir.path().join("seg-000002.seg");
    std::fs::create_dir(&obstacle).expect("take the merged segment's name");
    assert!(e.compact().is_err(), "the merged segment cannot be written");
    assert_eq!(count(&e, "load"), 1100);
    assert_eq!(e.stats().expect("stats").points_in_memory, 100);
    std::fs::remove_dir(&obstacle).expect("remove the obstacle");
    let compacted = e.compact().expect("compaction succeeds");
    assert_eq!((compacted.partitions, compacted.segments_merged), (1, 1));
    assert_eq!(e.stats().expect("stats").points_in_memory, 0);
    e.close().expect("close");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(count(&e, "load"), 1100);
}

/// The value stored at `point(10)`'s time, if any.
fn value_of_10(e: &Engine) -> Option<f64> {
    let QueryResult::Raw(series) = e.query(&Query::new("load")).expect("query") else {
        panic!("a raw query");
    };
    series
        .iter()
        .flat_map(|s| &s.points)
        .find(|p| p.0 == point(10).timestamp)
        .map(|p| p.1)
}

fn series_point(series: usize, i: i64) -> Point {
    Point {
        series: SeriesKey::new("cpu", vec![("host".into(), format!("h{series:03}"))]),
        timestamp: 1_700_000_000_000_000_000 + i * 1_000_000_000,
        value: i as f64,
    }
}

/// Opens `dir`, retrying while its lock is still held: another test in this
/// binary may be forking a child (the SIGKILL test) at the moment an engine
/// closes, and the child briefly holds the closed engine's lock descriptor
/// until it execs.
fn open_retrying(dir: &std::path::Path, options: Options) -> chronicle_engine::Result<Engine> {
    let mut tries = 0;
    loop {
        match Engine::open(dir, options.clone()) {
            Err(chronicle_engine::EngineError::Locked { .. }) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Copies every file of `from` (flat) into a new directory.
fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(from).expect("list").flatten() {
        if entry.file_type().expect("type").is_file() && entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
        }
    }
    to
}

// Protects: a flush cut short while it appends new series to `series.log`
// (a crash tears the log at any byte) leaves the log shorter than the WAL;
// the WAL carries those series' definitions, so every point is recovered
// and the next flush completes the log.
#[test]
fn series_log_cut_during_a_flush_recovers_from_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&(0..20).map(|s| series_point(s, 1)).collect::<Vec<_>>())
        .expect("first series");
    e.flush().expect("flush");
    let log_before = std::fs::read(dir.path().join("series.log")).expect("log");
    e.write(&(20..60).map(|s| series_point(s, 2)).collect::<Vec<_>>())
        .expect("new series");
    let crashed = copy_dir(dir.path());
    e.flush().expect("flush");
    let log_after = std::fs::read(dir.path().join("series.log")).expect("log");
    e.close().expect("close");
    assert!(log_after.len() > log_before.len());

    let mut tried = 0;
    for cut in (log_before.len()..=log_after.len()).step_by(7) {
        let state = copy_dir(crashed.path());
        std::fs::write(state.path().join("series.log"), &log_after[..cut]).expect("cut log");
        let e = open_retrying(state.path(), no_flush())
            .unwrap_or_else(|err| panic!("log cut at {cut}: {err}"));
        assert_eq!(count(&e, "cpu"), 60, "log cut at {cut}");
        e.flush().expect("flush after recovery");
        e.close().expect("close");
        let e = open_retrying(state.path(), no_flush()).expect("reopen");
        assert_eq!(count(&e, "cpu"), 60, "log cut at {cut}, reopened");
        e.close().expect("close");
        tried += 1;
    }
    assert!(tried > 50, "{tried} cuts");
}

// Protects: a segment of format version 1 (before decimal values and
// zstd), or a series log of version 1 (ids dense, before series were
// forgotten), is refused with a message that names the file, the version
// and what to do, instead of being misread.
#[test]
fn a_version_1_segment_or_series_log_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path(), 100);
    for file in [seg, dir.path().join("series.log")] {
        let mut bytes = std::fs::read(&file).expect("read");
        let version = bytes[8..12].to_vec();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&file, &bytes).expect("write");
        let err = Engine::open(dir.path(), no_flush())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("format version 1")
                && err.contains("export"),
            "{err}"
        );
        bytes[8..12].copy_from_slice(&version);
        std::fs::write(&file, &bytes).expect("write back");
    }
}

// Protects: a flush that fails (here: its segment's name is taken) keeps
// every point in memory and in the WAL, and the next flush, under a new
// name, writes them all: nothing acknowledged is dropped.
#[test]
fn a_failed_flush_keeps_its_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    e.write(&(0..500).map(point).collect::<Vec<_>>())
        .expect("write");
    let obstacle = dir.path().join("seg-000001.seg");
    std::fs::create_dir(&obstacle).expect("take the first segment's name");
    assert!(e.flush().is_err(), "the flush cannot create its segment");
    assert_eq!(count(&e, "load"), 500, "the points are still served");
    e.flush().expect("the next flush takes the next name");
    assert_eq!(count(&e, "load"), 500);
    e.close().expect("close");
    std::fs::remove_dir(&obstacle).expect("remove the obstacle");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(count(&e, "load"), 500);
}

// Protects: a compaction that fails in one partition (here: its new
// segment's name is taken) leaves no file of the others behind and hands
// none of its names out again, so the next flush and compaction succeed
// and every point is still there.
#[test]
fn a_failed_compaction_leaves_nothing_in_the_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), no_flush()).expect("open");
    // Two hour partitions (point 2800 starts the second), two flushes:
    // seg-000001..seg-000004, two segments in each partition.
    for range in [0..1000, 3000..4000] {
        e.write(&range.map(point).collect::<Vec<_>>())
            .expect("write");
    }
    e.flush().expect("first flush");
    for range in [1000..2000, 4000..5000] {
        e.write(&range.map(point).collect::<Vec<_>>())
            .expect("write");
    }
    e.flush().expect("second flush");
    let obstacle = dir.path().join("seg-000005.seg");
    std::fs::create_dir(&obstacle).expect("take the first partition's new name");
    assert!(
        e.compact().is_err(),
        "the first partition cannot be written"
    );
    assert!(
        !dir.path().join("seg-000006.seg").exists(),
        "the second partition's new segment is removed"
    );
    assert_eq!(count(&e, "load"), 4000);
    e.write(&(5000..5100).map(point).collect::<Vec<_>>())
        .expect("write");
    e.flush().expect("the next flush takes a name no job had");
    std::fs::remove_dir(&obstacle).expect("remove the obstacle");
    e.compact().expect("compaction succeeds");
    assert_eq!(count(&e, "load"), 4100);
    e.close().expect("close");
    let e = Engine::open(dir.path(), no_flush()).expect("reopen");
    assert_eq!(count(&e, "load"), 4100);
}

// Protects: a manifest that records a segment in an hour its points are
// not in (damage, or a build that computed hours with wrapping arithmetic)
// is refused at open with the segment named: queries, compaction and
// retention take each segment's points to lie in its hour.
#[test]
fn a_segment_recorded_in_the_wrong_hour_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path(), 100);
    let manifest = dir.path().join("MANIFEST");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).expect("read")).expect("json");
    let entry = &mut doc["segments"][0];
    let hour = entry["partition"].as_i64().expect("partition");
    entry["partition"] = (hour + 3_600_000_000_000).into();
    std::fs::write(&manifest, serde_json::to_vec(&doc).expect("json")).expect("write");
    let Err(err) = Engine::open(dir.path(), no_flush()) else {
        panic!("a segment in the wrong hour was accepted");
    };
    let text = err.to_string();
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        text.contains(&name) && text.contains("is recorded in the hour"),
        "{text}"
    );
}
