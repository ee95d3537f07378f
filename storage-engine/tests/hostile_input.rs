//! Hostile and damaged input never panics the engine: every decoder returns
//! an error instead. Random mutations of valid files and random bytes, with
//! the seed printed (CHRONICLE_TEST_SEED replays).

use chronicle_engine::lineproto;
use chronicle_engine::{Engine, Options, Point, Query, SeriesKey, SyncPolicy};
use rand::{Rng, SeedableRng};

fn rng() -> (u64, rand::rngs::StdRng) {
    let seed = std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// The raw points of every series of `metric`.
fn raw_series(e: &Engine, metric: &str) -> Vec<chronicle_engine::query::SeriesPoints> {
    match e.query(&Query::new(metric)).expect("query") {
        chronicle_engine::QueryResult::Raw(series) => series,
        other => panic!("raw points, not {other:?}"),
    }
}

/// No syncs, and points stay in memory until a test flushes them.
fn in_memory_until_flushed() -> Options {
    Options {
        sync: SyncPolicy::Never,
        memtable_points: usize::MAX,
        retention: None,
        ..Options::default()
    }
}

// Protects: the line-protocol parser answers every input, however mangled.
#[test]
fn line_protocol_never_panics() {
    let (_, mut rng) = rng();
    let alphabet = b"cpu,host=a value=1.5i\\ \"=,tu-e9 17000";
    for _ in 0..20_000 {
        let len = rng.random_range(0..60);
        let line: Vec<u8> = (0..len)
            .map(|_| {
                if rng.random_bool(0.9) {
                    alphabet[rng.random_range(0..alphabet.len())]
                } else {
                    rng.random()
                }
            })
            .collect();
        let _ = lineproto::parse_line(&line, 1, 0, |f| {
            let _ = lineproto::series_key(f.series, f.field);
        });
    }
}

// Protects: query times as people type them (RFC 3339 with any bytes in
// the zone) give an error, never a panic.
#[test]
fn query_times_never_panic() {
    let (_, mut rng) = rng();
    let chars: Vec<char> = "0123456789-:+TZ.é€ ".chars().collect();
    for _ in 0..20_000 {
        let mut text = String::from("2026-01-01T00:00:00");
        for _ in 0..rng.random_range(0..8) {
            text.push(chars[rng.random_range(0..chars.len())]);
        }
        let _ = chronicle_engine::timefmt::parse_time(&text);
    }
}

// Protects: the latest timestamp the engine accepts is one it can read
// back after compaction; one past it (i64::MAX, which no range reaches)
// is refused by every way in, with nothing written.
#[test]
fn the_latest_timestamp_is_kept_and_one_past_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), in_memory_until_flushed()).expect("open");
    let latest = chronicle_engine::model::LATEST_TIMESTAMP;
    let point = |ts: i64| Point {
        series: SeriesKey::new("m", vec![("k".into(), "points".into())]),
        timestamp: ts,
        value: 1.0,
    };
    let refused = e
        .write(&[point(latest), point(i64::MAX)])
        .expect_err("i64::MAX");
    assert!(
        refused.to_string().contains("line 2: timestamp"),
        "{refused}"
    );
    let line = format!("m,k=lines value=2 {}", i64::MAX);
    let refused = e.write_lines(line.as_bytes(), 1).expect_err("i64::MAX");
    assert!(refused.to_string().contains("past the latest"), "{refused}");
    let json = format!(r#"{{"metric":"m","timestamp":{},"value":3}}"#, i64::MAX);
    assert!(chronicle_engine::jsonl::decode_point(&json, 1).is_err());
    assert_eq!(
        e.stats().expect("stats").points,
        0,
        "nothing of a refused call"
    );

    e.write(&[point(latest)]).expect("write");
    e.write_lines(format!("m,k=lines value=2 {latest}").as_bytes(), 1)
        .expect("write lines");
    e.flush().expect("flush");
    e.write_lines(format!("m,k=lines value=4 {}", latest - 1).as_bytes(), 1)
        .expect("write lines");
    e.compact().expect("compact");
    let series = raw_series(&e, "m");
    let mut times: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    times.sort_unstable();
    let shown: Vec<_> = series
        .iter()
        .map(|s| (s.tags.clone(), s.points.clone()))
        .collect();
    assert_eq!(times, vec![latest - 1, latest, latest], "{shown:?}");
}

const HOUR: i64 = 3_600_000_000_000;

/// Line protocol with one point in each of `hours`, valued `value`.
fn one_point_an_hour(hours: std::ops::Range<i64>, value: i64) -> Vec<u8> {
    hours
        .flat_map(|h| format!("m,k=hours value={value} {}\n", h * HOUR).into_bytes())
        .collect()
}

// Protects: a write whose points lie in more hour partitions than the
// database may hold is refused whole, before its segments (a file and a
// memory map each) are made; hours already held still take points, and
// the count survives reopening. Without the limit, one request of 70,000
// lines an hour apart made every later flush fail for want of memory maps.
#[test]
fn a_write_past_the_partition_limit_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        max_partitions: 50,
        ..in_memory_until_flushed()
    };
    let e = Engine::open(dir.path(), options.clone()).expect("open");
    let refused = e
        .write_lines(&one_point_an_hour(0..51, 1), 1)
        .expect_err("51 hours");
    assert!(
        matches!(refused, chronicle_engine::EngineError::Limit(_)),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("--max-partitions"),
        "{refused}"
    );
    let stats = e.stats().expect("stats");
    assert_eq!((stats.series, stats.points), (0, 0), "nothing of it");

    e.write_lines(&one_point_an_hour(0..30, 1), 1)
        .expect("30 hours");
    e.flush().expect("flush");
    e.write_lines(&one_point_an_hour(20..50, 2), 1)
        .expect("20 more, 10 of them held in segments");
    let point_at = |hour: i64| Point {
        series: SeriesKey::new("m", vec![("k".into(), "points".into())]),
        timestamp: hour * HOUR + 1,
        value: 3.0,
    };
    assert!(matches!(
        e.write(&[point_at(0), point_at(50)]),
        Err(chronicle_engine::EngineError::Limit(_))
    ));
    e.write(&[point_at(0), point_at(49)])
        .expect("held hours, in segments and in memory");
    e.close().expect("close");

    let e = Engine::open(dir.path(), options).expect("reopen");
    assert_eq!(e.stats().expect("stats").partitions, 50);
    assert!(e.write_lines(&one_point_an_hour(-1..0, 4), 1).is_err());
    e.write_lines(&one_point_an_hour(0..50, 4), 1)
        .expect("every held hour");
    assert_eq!(e.query(&Query::new("m")).expect("query").points(), 50 + 2);
}

/// Line protocol with one point in each of `series` (a tag value each).
fn one_point_a_series(series: std::ops::Range<u32>) -> Vec<u8> {
    series
        .flat_map(|s| format!("m,s={s} value=1 {s}\n").into_bytes())
        .collect()
}

// Protects: a write that would make more series than the database may
// hold (each is held in memory while it is open) is refused whole, new
// series and all, while the series it holds still take points, before
// and after reopening; a refused write leaves its metric's other series
// listed.
#[test]
fn a_write_past_the_series_limit_is_refused_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        max_series: 100,
        ..in_memory_until_flushed()
    };
    let series_of_m = |e: &Engine| raw_series(e, "m").len();
    let e = Engine::open(dir.path(), options.clone()).expect("open");
    let refused = e
        .write_lines(&one_point_a_series(0..101), 1)
        .expect_err("101 series");
    assert!(
        matches!(refused, chronicle_engine::EngineError::Limit(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("--max-series"), "{refused}");
    assert_eq!(e.stats().expect("stats").series, 0, "nothing of it");
    e.write_lines(&one_point_a_series(0..60), 1)
        .expect("60 series");
    assert!(e.write_lines(&one_point_a_series(30..101), 1).is_err());
    assert_eq!(series_of_m(&e), 60, "the refused write's series are gone");
    e.write_lines(&one_point_a_series(30..100), 1)
        .expect("40 new, 30 held");
    e.close().expect("close");

    let e = Engine::open(dir.path(), options).expect("reopen");
    assert!(e.write_lines(b"m,s=new value=1 1", 1).is_err());
    e.write_lines(&one_point_a_series(0..100), 1)
        .expect("every held series");
    assert_eq!(series_of_m(&e), 100);
}

// Protects: series that come and go do not fill the series limit for
// good: once retention has dropped the hours that held them, the series
// it left without points are forgotten, and new ones are taken in their
// place (before and after reopening).
#[test]
fn retention_frees_the_series_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        max_series: 10,
        ..in_memory_until_flushed()
    };
    // Timestamps of 1970: retention drops their hour.
    let e = Engine::open(dir.path(), options.clone()).expect("open");
    e.write_lines(&one_point_a_series(0..10), 1)
        .expect("10 series");
    e.flush().expect("flush");
    let now = format!("m,s=new value=1 {}", now_nanos());
    assert!(e.write_lines(now.as_bytes(), 1).is_err(), "an 11th");
    let dropped = e.apply_retention(24 * HOUR).expect("retention");
    assert_eq!((dropped.partitions, dropped.series), (1, 10));
    let fresh: Vec<u8> = (0..10)
        .flat_map(|s| format!("m,s=fresh{s} value=1 {}\n", now_nanos()).into_bytes())
        .collect();
    e.write_lines(&fresh, 1)
        .expect("10 new series in their place");
    assert_eq!(raw_series(&e, "m").len(), 10);
    e.close().expect("close");
    let e = Engine::open(dir.path(), options).expect("reopen");
    assert_eq!(
        e.stats().expect("stats").series,
        10,
        "the log names no more"
    );
    assert!(e.write_lines(now.as_bytes(), 1).is_err(), "an 11th");
    assert_eq!(raw_series(&e, "m").len(), 10);
}

/// Now, in nanoseconds since the epoch.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

// Protects: series' names and tags are bounded in bytes as well as in
// number (1 KiB a series on average under --max-series), and a line whose
// long tags are counted again for each of its many fields is refused once
// a request has gone through 256 MiB of them, before it holds the engine
// for minutes; nothing of either is written.
#[test]
fn long_tags_are_bounded_in_memory_and_in_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(
        dir.path(),
        Options {
            max_series: 10,
            ..in_memory_until_flushed()
        },
    )
    .expect("open");
    let long = "x".repeat(20_000);
    let refused = e
        .write_lines(format!("m,k={long} value=1 1").as_bytes(), 1)
        .expect_err("20 kB of tags under a 10 kB budget");
    assert!(
        matches!(refused, chronicle_engine::EngineError::Limit(ref m) if m.contains("shorten the tags")),
        "{refused}"
    );
    e.write_lines(format!("m,k={} value=1 1", &long[..5_000]).as_bytes(), 1)
        .expect("5 kB of tags");

    assert_eq!(
        e.stats().expect("stats").series,
        1,
        "nothing of the refused"
    );
    drop(e);

    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(
        dir.path(),
        Options {
            max_series: 100,
            ..in_memory_until_flushed()
        },
    )
    .expect("open");
    // One series (its 65 kB tag within 100 kB), written 4,200 times.
    let line = format!(
        "n,k={} {} 1",
        "y".repeat(65_000),
        vec!["f=1"; 4_200].join(",")
    );
    let refused = e
        .write_lines(line.as_bytes(), 1)
        .expect_err("273 MB of keys");
    assert!(
        matches!(refused, chronicle_engine::EngineError::TooLarge(ref m) if m.contains("series and field names")),
        "{refused}"
    );
    assert_eq!(e.stats().expect("stats").series, 0, "nothing of it");
}

// Protects: with `max_future`, a point timestamped further ahead than it
// allows is refused with its line (by line protocol and by `write`), and
// nothing of its request is written; points within it are taken. It is
// what bounds, with retention, the hours a client can make a database
// hold: retention drops only past hours.
#[test]
fn points_too_far_in_the_future_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(
        dir.path(),
        Options {
            max_future: Some(HOUR),
            ..in_memory_until_flushed()
        },
    )
    .expect("open");
    let now = now_nanos();
    let lines = format!("m value=1 {}\nm value=2 {}\n", now, now + 2 * HOUR);
    let refused = e
        .write_lines(lines.as_bytes(), 1)
        .expect_err("two hours ahead");
    assert!(
        matches!(refused, chronicle_engine::EngineError::BadInput { line: 2, ref detail } if detail.contains("--max-future")),
        "{refused}"
    );
    let point = |ts: i64| Point {
        series: SeriesKey::new("m", vec![]),
        timestamp: ts,
        value: 3.0,
    };
    assert!(e.write(&[point(now), point(now + 2 * HOUR)]).is_err());
    assert_eq!(e.stats().expect("stats").points, 0, "nothing of either");
    e.write_lines(format!("m value=1 {}", now + HOUR / 2).as_bytes(), 1)
        .expect("half an hour ahead");
    e.write(&[point(now)]).expect("now");
    assert_eq!(e.stats().expect("stats").points, 2);
}

// Protects: flushes leave at most two segments per partition allowed (a
// flush that finds no room has a compaction make it first), so the memory
// maps stay within `MAPS_PER_PARTITION` of the limit however often the
// same hours are written between compactions; retired files go, and every
// hour reads back the last value written to it after every flush.
#[test]
fn flushes_keep_the_segments_within_twice_the_partition_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 20;
    let e = Engine::open(
        dir.path(),
        Options {
            max_partitions: limit,
            memtable_points: limit / 2,
            ..in_memory_until_flushed()
        },
    )
    .expect("open");
    let segment_files = || {
        std::fs::read_dir(dir.path())
            .expect("list")
            .filter(|f| {
                let name = f.as_ref().expect("entry").file_name();
                chronicle_engine::manifest::is_segment_file(&name.to_string_lossy())
            })
            .count() as u64
    };
    let mut last = std::collections::BTreeMap::new();
    // Three times the first half (three segments an hour), then the
    // second half twice (the second time, no room), then each half in turn.
    let halves = [
        0..10,
        0..10,
        0..10,
        10..20,
        10..20,
        0..10,
        10..20,
        0..10,
        10..20,
    ];
    for (round, hours) in halves.into_iter().enumerate() {
        let value = round as i64;
        e.write_lines(&one_point_an_hour(hours.clone(), value), 1)
            .expect("write");
        last.extend(hours.map(|h| (h * HOUR, value as f64)));
        let stats = e.stats().expect("stats");
        assert_eq!(
            stats.points_in_memory, 0,
            "round {round}: the write flushed"
        );
        assert!(
            stats.segments <= 2 * limit as u64,
            "round {round}: {} segments",
            stats.segments
        );
        assert_eq!(
            segment_files(),
            stats.segments,
            "round {round}: retired files go"
        );
        if round == 4 {
            // The flush that found no room had a compaction make it: one
            // segment an hour, then this round's ten. Merging only the
            // hours being flushed would have left 40, and the next flush
            // merging them again.
            assert_eq!(stats.segments, 30);
        }
        let series = raw_series(&e, "m");
        let expected: Vec<(i64, f64)> = last.iter().map(|(&t, &v)| (t, v)).collect();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].points, expected, "round {round}");
    }
}

// Protects: a snapshot, which flushes holding the engine's lock (no
// compaction can make room for it), merges the memtable's hours with
// their segments instead when a flush would pass twice the partition
// limit, or every hour when that is not enough; the copy holds every
// point.
#[test]
fn a_snapshot_that_finds_no_room_merges_under_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 20;
    let e = Engine::open(
        dir.path(),
        Options {
            max_partitions: limit,
            ..in_memory_until_flushed()
        },
    )
    .expect("open");
    for round in 0..4 {
        e.write_lines(&one_point_an_hour(0..10, round), 1)
            .expect("write");
        e.flush().expect("flush");
    }
    assert_eq!(e.stats().expect("stats").segments, 40);
    // New hours: merging them alone would leave 50.
    e.write_lines(&one_point_an_hour(10..20, 9), 1)
        .expect("write");
    let copy = tempfile::tempdir().expect("tempdir");
    let dest = copy.path().join("db");
    e.snapshot(&dest).expect("snapshot");
    assert_eq!(e.stats().expect("stats").segments, 20, "every hour merged");
    let copied = Engine::open(&dest, in_memory_until_flushed()).expect("open the copy");
    let series = raw_series(&copied, "m");
    let expected: Vec<(i64, f64)> = (0..20)
        .map(|h| (h * HOUR, if h < 10 { 3.0 } else { 9.0 }))
        .collect();
    assert_eq!(series[0].points, expected);
}

// Protects: a query is refused once its answer would hold more values than
// asked (raw points, read no further than the series that passes the
// limit), while an aggregated answer counts its windows, not the points
// behind them.
#[test]
fn a_query_is_answered_within_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), in_memory_until_flushed()).expect("open");
    let points: Vec<Point> = (0..100)
        .map(|i| Point {
            series: SeriesKey::new("m", vec![("k".into(), format!("s{}", i % 4))]),
            timestamp: 1_700_000_000_000_000_000 + i * 1_000_000_000,
            value: i as f64,
        })
        .collect();
    e.write(&points).expect("write");
    e.flush().expect("flush");
    let raw = Query::new("m");
    assert!(e.query_at_most(&raw, 99).expect("query").is_none());
    let answer = e.query_at_most(&raw, 100).expect("query").expect("fits");
    assert_eq!((answer.points(), answer.answer_size()), (100, 100));
    // 100 points a second apart: ten windows of ten seconds.
    let mut windowed = Query::new("m");
    windowed.window = Some((10_000_000_000, chronicle_engine::Aggregate::Mean));
    let answer = e
        .query_at_most(&windowed, 10)
        .expect("query")
        .expect("fits");
    assert_eq!((answer.points(), answer.answer_size()), (100, 10));
    assert!(e.query_at_most(&windowed, 9).expect("query").is_none());
}

// Protects: damaged segments, WAL files and manifests give errors, never a
// panic, whatever byte is changed or wherever the file is cut.
#[test]
fn damaged_files_never_panic() {
    let (seed, mut rng) = rng();
    let source = tempfile::tempdir().expect("tempdir");
    let options = in_memory_until_flushed();
    {
        let e = Engine::open(source.path(), options.clone()).expect("open");
        let points: Vec<Point> = (0..3000)
            .map(|i| Point {
                series: SeriesKey::new("m", vec![("k".into(), format!("v{}", i % 7))]),
                timestamp: 1_700_000_000_000_000_000 + i * 7_000_000_000,
                value: (i % 13) as f64 * 0.5,
            })
            .collect();
        e.write(&points[..2000]).expect("write");
        e.flush().expect("flush");
        e.write(&points[2000..]).expect("write");
        std::mem::forget(e); // keep the WAL unflushed
    }
    let files: Vec<String> = std::fs::read_dir(source.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    for round in 0..300 {
        let copy = tempfile::tempdir().expect("tempdir");
        for f in &files {
            std::fs::copy(source.path().join(f), copy.path().join(f)).expect("copy");
        }
        let victim = &files[rng.random_range(0..files.len())];
        let path = copy.path().join(victim);
        let mut bytes = std::fs::read(&path).expect("read");
        if !bytes.is_empty() {
            match rng.random_range(0..3) {
                0 => {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
                1 => bytes.truncate(rng.random_range(0..bytes.len())),
                _ => {
                    for _ in 0..rng.random_range(1..20) {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
            }
        }
        std::fs::write(&path, &bytes).expect("write");
        // Either it opens and answers (possibly with an error), or it refuses.
        let outcome = std::panic::catch_unwind(|| {
            if let Ok(e) = Engine::open(copy.path(), options.clone()) {
                let _ = e.query(&Query::new("m"));
                let _ = e.verify();
            }
        });
        assert!(
            outcome.is_ok(),
            "seed {seed} round {round}: damaging {victim} panicked"
        );
    }
}
