//! The engine against a `BTreeMap` model: random writes (with overwrites),
//! flushes, compactions, reopens and queries. The seed is printed;
//! CHRONICLE_TEST_SEED=N replays a failure.

use std::collections::BTreeMap;

use chronicle_engine::{
    Aggregate, Engine, Options, Point, Query, QueryResult, SeriesKey, SyncPolicy, TagFilter,
};
use rand::{Rng, SeedableRng};

type Model = BTreeMap<SeriesKey, BTreeMap<i64, f64>>;

fn seed() -> u64 {
    std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// `seed()`, printed so that a failure can be replayed, and a generator
/// from it.
fn seeded_rng() -> (u64, rand::rngs::StdRng) {
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Now, in nanoseconds since the epoch.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// Writes `points` to the engine and to the model (last write wins).
fn write_both(e: &Engine, model: &mut Model, points: &[Point]) {
    e.write(points).expect("write");
    remember(model, points);
}

/// Writes `points` to the model only (last write wins).
fn remember(model: &mut Model, points: &[Point]) {
    for p in points {
        model
            .entry(p.series.clone())
            .or_default()
            .insert(p.timestamp, p.value);
    }
}

fn key(host: usize, metric: usize) -> SeriesKey {
    SeriesKey::new(
        format!("m{metric}"),
        vec![
            ("host".into(), format!("h{host}")),
            ("dc".into(), format!("d{}", host % 2)),
        ],
    )
}

fn options() -> Options {
    Options {
        sync: SyncPolicy::Never,
        memtable_points: 700,
        retention: None,
        ..Options::default()
    }
}

fn model_range(
    model: &Model,
    metric: &str,
    filter: impl Fn(&SeriesKey) -> bool,
    start: i64,
    end: i64,
) -> Vec<(SeriesKey, Vec<(i64, f64)>)> {
    model
        .iter()
        .filter(|(k, _)| k.metric == metric && filter(k))
        .map(|(k, pts)| {
            (
                k.clone(),
                pts.range(start..end)
                    .map(|(&t, &v)| (t, v))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

/// The engine's raw answer to `q`, as the model holds series.
fn raw_answer(e: &Engine, q: &Query) -> Vec<(SeriesKey, Vec<(i64, f64)>)> {
    let QueryResult::Raw(got) = e.query(q).expect("query") else {
        panic!("raw expected")
    };
    got.into_iter()
        .map(|s| {
            (
                SeriesKey::new(s.metric, s.tags.into_iter().collect()),
                s.points,
            )
        })
        .collect()
}

// Protects: a metric of many series, each in a few of many hours (where a
// query lists every segment's series instead of looking each series up in
// every segment, which cost series × segments), reads back every point of
// every series, with rewrites in later segments and in the memtable, as a
// query for one series (looked up) does.
#[test]
fn many_series_over_many_hours_are_all_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), options()).expect("open");
    let mut model = Model::new();
    let hour: i64 = 3_600_000_000_000;
    for round in 0..3i64 {
        let points: Vec<Point> = (0..150usize)
            .flat_map(|h| {
                let hours = [h as i64 % 50, (h as i64 * 7 + round) % 50];
                hours.map(|at| Point {
                    series: key(h, 0),
                    timestamp: at * hour + h as i64,
                    value: (round * 1000) as f64 + h as f64,
                })
            })
            .collect();
        write_both(&e, &mut model, &points);
        if round < 2 {
            e.flush().expect("flush");
        }
    }
    assert!(e.stats().expect("stats").points_in_memory > 0);
    let everything = raw_answer(&e, &Query::new("m0"));
    assert_eq!(everything.len(), 150);
    assert_eq!(
        everything,
        model_range(&model, "m0", |_| true, i64::MIN, i64::MAX)
    );
    for host in [0, 77, 149] {
        let mut q = Query::new("m0");
        q.filters
            .push(TagFilter::parse(&format!("host=h{host}")).expect("filter"));
        let want = |k: &SeriesKey| k.tag("host") == Some(format!("h{host}").as_str());
        assert_eq!(
            raw_answer(&e, &q),
            model_range(&model, "m0", want, i64::MIN, i64::MAX)
        );
    }
}

// Protects: compaction merges segments without the engine's lock, so a
// write, a flush and retention that come meanwhile neither wait for it nor
// are undone by it: points flushed into an hour while its older segments
// were being merged win over them, an hour dropped meanwhile stays
// dropped (its merge goes unused, and its file), and points still in the
// memtable are merged in.
#[test]
fn compaction_lets_writes_go_on_and_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = std::sync::Arc::new(Engine::open(dir.path(), options()).expect("open"));
    let mut model = Model::new();
    let hour: i64 = 3_600_000_000_000;
    let points = |hours: std::ops::Range<i64>, value: f64| -> Vec<Point> {
        hours
            .flat_map(|h| (0..5).map(move |i| (h, i)))
            .map(|(h, i)| Point {
                series: key(0, 0),
                timestamp: h * hour + i,
                value,
            })
            .collect()
    };
    for round in 0..3 {
        write_both(&e, &mut model, &points(0..4, f64::from(round)));
        e.flush().expect("flush");
    }
    let meanwhile = {
        let e = std::sync::Arc::clone(&e);
        let (late_flushed, late_in_memory) = (points(1..2, 10.0), points(2..3, 20.0));
        remember(&mut model, &late_flushed);
        remember(&mut model, &late_in_memory);
        model
            .values_mut()
            .for_each(|pts| pts.retain(|&t, _| t >= hour));
        move || {
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                e.write(&late_flushed).expect("write");
                e.flush().expect("flush");
                e.write(&late_in_memory).expect("write");
                // Hours that ended 1.5 hours after the epoch or earlier:
                // hour 0 only, whatever the clock does meanwhile.
                let keep = now_nanos() - hour * 3 / 2;
                assert_eq!(
                    e.apply_retention(keep).expect("retention").partitions,
                    1,
                    "hour 0"
                );
                let _ = done.send(());
            });
            finished
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the writer done within 30 s (it waits, and this times out, if the compaction holds the lock)");
        }
    };
    let stats = e.compact_with(meanwhile).expect("compact");
    // Hours 1 to 3 merged (hour 0's merge unused), and hour 2's segment
    // with the memtable's points.
    assert_eq!(stats.partitions, 4, "{stats:?}");
    assert_eq!(
        raw_answer(&e, &Query::new("m0")),
        model_range(&model, "m0", |_| true, i64::MIN, i64::MAX)
    );
    let after = e.stats().expect("stats");
    assert_eq!(after.points_in_memory, 0);
    // Hour 1: its merge, then the segment flushed meanwhile (which wins);
    // hours 2 and 3: one each.
    assert_eq!(after.segments, 4);
    let segment_files = std::fs::read_dir(dir.path())
        .expect("list")
        .filter(|f| {
            let name = f.as_ref().expect("entry").file_name();
            chronicle_engine::manifest::is_segment_file(&name.to_string_lossy())
        })
        .count() as u64;
    assert_eq!(segment_files, after.segments, "unused merges' files go");
}

// Protects: compactions, flushes and queries running while writers write
// (compaction merging without the engine's lock) lose, duplicate or revive
// no point: each writer rewrites its own series' points at random over a
// few hours, with a small partition limit so that flushes find no room and
// have compactions make it; at the end, and after reopening, every series
// holds exactly its writer's last values. Meanwhile the series no point is
// left of are sought over and over: none is found. The seed is printed.
#[test]
fn compactions_flushes_and_writes_at_once_keep_every_last_value() {
    let (seed, _) = seeded_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        memtable_points: 300,
        max_partitions: 8,
        ..options()
    };
    let e = std::sync::Arc::new(Engine::open(dir.path(), options.clone()).expect("open"));
    let hour: i64 = 3_600_000_000_000;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3usize)
        .map(|w| {
            let e = std::sync::Arc::clone(&e);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64));
                let mut model = Model::new();
                for round in 0..150 {
                    let points: Vec<Point> = (0..20)
                        .map(|i| Point {
                            series: key(w * 2 + i % 2, 0),
                            timestamp: rng.random_range(0..8) * hour + rng.random_range(0..40),
                            value: f64::from(round * 100 + i as i32),
                        })
                        .collect();
                    write_both(&e, &mut model, &points);
                }
                model
            })
        })
        .collect();
    let busy = |work: fn(&Engine)| {
        let (e, done) = (std::sync::Arc::clone(&e), std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                work(&e);
            }
        })
    };
    let compactor = busy(|e| {
        e.compact().expect("compact");
    });
    let flusher = busy(|e| e.flush().expect("flush"));
    let reader = busy(|e| {
        e.query(&Query::new("m0")).expect("query");
    });
    // Every series always has points (in memory, in a segment, or in both
    // while a flush or a compaction moves them): none may be forgotten.
    let forgetter = busy(|e| {
        assert_eq!(
            e.forget_unused_series().expect("forget"),
            0,
            "forgot a series"
        );
    });
    let mut model = Model::new();
    for writer in writers {
        model.extend(writer.join().expect("writer"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in [compactor, flusher, reader, forgetter] {
        thread.join().expect("background work");
    }
    let everything = model_range(&model, "m0", |_| true, i64::MIN, i64::MAX);
    assert_eq!(raw_answer(&e, &Query::new("m0")), everything, "seed {seed}");
    assert!(e.stats().expect("stats").segments <= 16, "seed {seed}");
    let e = std::sync::Arc::try_unwrap(e).unwrap_or_else(|_| panic!("one engine"));
    e.close().expect("close");
    let e = Engine::open(dir.path(), options).expect("reopen");
    assert_eq!(
        raw_answer(&e, &Query::new("m0")),
        everything,
        "seed {seed}: reopened"
    );
}

// Protects: what the engine returns always equals the model, whatever the
// interleaving of writes, flushes, compactions, retention (which forgets
// the series it empties, whose ids reopening gives to new series) and
// reopens.
#[test]
fn random_operations_match_a_model() {
    let (seed, mut rng) = seeded_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Some(Engine::open(dir.path(), options()).expect("open"));
    let mut model: Model = BTreeMap::new();
    let hour = 3_600_000_000_000i64;
    let base = 1_700_000_000_000_000_000i64;
    for step in 0..600 {
        let e = engine.as_ref().expect("engine");
        match rng.random_range(0..100) {
            0..=59 => {
                let n = rng.random_range(1..200);
                let points: Vec<Point> = (0..n)
                    .map(|_| Point {
                        series: key(rng.random_range(0..5), rng.random_range(0..2)),
                        // Few distinct timestamps, so overwrites happen.
                        timestamp: base + rng.random_range(0..400) * (hour / 50),
                        value: rng.random_range(-1000..1000) as f64 / 4.0,
                    })
                    .collect();
                write_both(e, &mut model, &points);
            }
            60..=67 => e.flush().expect("flush"),
            68..=72 => {
                e.compact().expect("compact");
            }
            73..=79 => {
                engine.take().expect("engine").close().expect("close");
                engine = Some(Engine::open(dir.path(), options()).expect("reopen"));
            }
            80..=82 => {
                // Drop without close: the WAL alone must carry the memtable.
                drop(engine.take());
                engine = Some(Engine::open(dir.path(), options()).expect("reopen after drop"));
            }
            83..=85 => {
                // Every point flushed first: retention drops segments only.
                e.flush().expect("flush");
                let cutoff = (base.div_euclid(hour) + rng.random_range(0..10)) * hour;
                let dropped = e.apply_retention(now_nanos() - cutoff).expect("retention");
                let series_before = model.len();
                for points in model.values_mut() {
                    points.retain(|t, _| t.div_euclid(hour) * hour + hour > cutoff);
                }
                model.retain(|_, points| !points.is_empty());
                assert_eq!(
                    dropped.series as usize,
                    series_before - model.len(),
                    "seed {seed} step {step}: series forgotten"
                );
                let series = e.stats().expect("stats").series;
                assert_eq!(series as usize, model.len(), "seed {seed} step {step}");
            }
            _ => {
                let metric = format!("m{}", rng.random_range(0..2));
                let start = base + rng.random_range(-5..400) * (hour / 50);
                let end = start + rng.random_range(1..300) * (hour / 50);
                let host = format!("h{}", rng.random_range(0..5));
                let mut q = Query::new(&metric);
                q.start = start;
                q.end = end;
                let use_filter = rng.random_bool(0.5);
                if use_filter {
                    q.filters
                        .push(TagFilter::parse(&format!("host!={host}")).expect("filter"));
                }
                let expected = model_range(
                    &model,
                    &metric,
                    |k| !use_filter || k.tag("host") != Some(host.as_str()),
                    start,
                    end,
                );
                let QueryResult::Raw(got) = e.query(&q).expect("query") else {
                    panic!("raw expected")
                };
                let got: Vec<(SeriesKey, Vec<(i64, f64)>)> = got
                    .into_iter()
                    .map(|s| {
                        (
                            SeriesKey::new(s.metric, s.tags.into_iter().collect()),
                            s.points,
                        )
                    })
                    .collect();
                assert_eq!(got, expected, "seed {seed} step {step}: raw query");
                // Aggregates over the same range, grouped by dc.
                q.window = Some((hour, Aggregate::Sum));
                q.group_by = Some("dc".into());
                let QueryResult::Aggregated(groups) = e.query(&q).expect("query") else {
                    panic!("aggregated expected")
                };
                let mut want: BTreeMap<String, BTreeMap<i64, (f64, u64)>> = BTreeMap::new();
                for (k, pts) in &expected {
                    for &(t, v) in pts {
                        let w = want
                            .entry(k.tag("dc").unwrap_or("").to_string())
                            .or_default();
                        let slot = w.entry(t.div_euclid(hour) * hour).or_default();
                        slot.0 += v;
                        slot.1 += 1;
                    }
                }
                let got: BTreeMap<String, BTreeMap<i64, (f64, u64)>> = groups
                    .into_iter()
                    .map(|g| {
                        (
                            g.group.unwrap_or_default(),
                            g.windows
                                .into_iter()
                                .map(|w| (w.start, (w.value, w.count)))
                                .collect(),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "seed {seed} step {step}: sum per hour by dc");
            }
        }
    }
    let e = engine.take().expect("engine");
    e.compact().expect("final compaction");
    let stats = e.stats().expect("stats");
    let model_points: usize = model.values().map(BTreeMap::len).sum();
    assert_eq!(
        stats.points, model_points as u64,
        "seed {seed}: after full compaction, no duplicates remain"
    );
    let mut exported = Vec::new();
    assert_eq!(
        e.export_json(&mut exported).expect("export"),
        model_points as u64
    );
    e.close().expect("close");
}

// Protects: each aggregate function, windows aligned to the epoch.
#[test]
fn aggregates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), options()).expect("open");
    let k = SeriesKey::new("cpu", vec![("host".into(), "a".into())]);
    let s = 1_000_000_000i64;
    let pts: Vec<Point> = [(5, 1.0), (15, 2.0), (25, 4.0), (65, 10.0)]
        .iter()
        .map(|&(t, v)| Point {
            series: k.clone(),
            timestamp: t * s,
            value: v,
        })
        .collect();
    e.write(&pts).expect("write");
    let run = |agg, flush: bool| {
        if flush {
            e.flush().expect("flush");
        }
        let mut q = Query::new("cpu");
        q.window = Some((60 * s, agg));
        let QueryResult::Aggregated(g) = e.query(&q).expect("query") else {
            panic!()
        };
        g[0].windows
            .iter()
            .map(|w| (w.start / s, w.value))
            .collect::<Vec<_>>()
    };
    for flush in [false, true] {
        assert_eq!(run(Aggregate::Count, flush), vec![(0, 3.0), (60, 1.0)]);
        assert_eq!(run(Aggregate::Sum, flush), vec![(0, 7.0), (60, 10.0)]);
        assert_eq!(
            run(Aggregate::Mean, flush),
            vec![(0, 7.0 / 3.0), (60, 10.0)]
        );
        assert_eq!(run(Aggregate::Min, flush), vec![(0, 1.0), (60, 10.0)]);
        assert_eq!(run(Aggregate::Max, flush), vec![(0, 4.0), (60, 10.0)]);
        assert_eq!(run(Aggregate::First, flush), vec![(0, 1.0), (60, 10.0)]);
        assert_eq!(run(Aggregate::Last, flush), vec![(0, 4.0), (60, 10.0)]);
        let sd = run(Aggregate::Stddev, flush);
        assert!((sd[0].1 - 1.527_525_231_651_946_6).abs() < 1e-12, "{sd:?}");
        assert_eq!(sd[1].1, 0.0);
    }
    let mut q = Query::new("cpu");
    q.filters
        .push(TagFilter::parse_regex("host=a|b").expect("regex"));
    assert_eq!(e.query(&q).expect("query").points(), 4);
    q.filters = vec![TagFilter::parse_regex("host=b.*").expect("regex")];
    assert_eq!(e.query(&q).expect("query").points(), 0);
}

// Protects: a second process (here: a second open) is refused clearly.
#[test]
fn exclusive_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Engine::open(dir.path(), options()).expect("open");
    let err = Engine::open(dir.path(), options())
        .err()
        .expect("second open refused");
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
}

// Protects: concurrent writers with sync=always (group commit) lose
// nothing and see no interleaving damage.
#[test]
fn concurrent_writers_with_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        sync: SyncPolicy::Always,
        memtable_points: 5_000,
        retention: None,
        ..Options::default()
    };
    let engine = std::sync::Arc::new(Engine::open(dir.path(), options.clone()).expect("open"));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let e = std::sync::Arc::clone(&engine);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let p = Point {
                        series: SeriesKey::new("g", vec![("writer".into(), t.to_string())]),
                        timestamp: i,
                        value: f64::from(t * 1000 + i as i32),
                    };
                    e.write(&[p]).expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let engine = std::sync::Arc::try_unwrap(engine).unwrap_or_else(|_| panic!("still shared"));
    engine.close().expect("close");
    let engine = Engine::open(dir.path(), options).expect("reopen");
    let QueryResult::Raw(series) = engine.query(&Query::new("g")).expect("query") else {
        panic!("raw expected")
    };
    assert_eq!(series.len(), 8);
    for s in series {
        let t: i32 = s.tags["writer"].parse().expect("writer tag");
        let expected: Vec<(i64, f64)> = (0..200)
            .map(|i| (i, f64::from(t * 1000 + i as i32)))
            .collect();
        assert_eq!(s.points, expected, "writer {t}");
    }
}

// Protects: a malformed line rejects its whole request: none of its points
// and none of the series it introduced are stored, before or after a
// reopen, and the next request's series get ids the WAL defines.
#[test]
fn a_malformed_line_writes_nothing_of_its_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), options()).expect("open");
    engine
        .write_lines(b"kept,host=a value=1 10\n", 1)
        .expect("first request");
    let bad = b"kept,host=a value=2 20\nghost,host=b value=3 30\nghost,host=c value=oops 40\n";
    let err = engine.write_lines(bad, 1).expect_err("malformed line");
    assert!(err.to_string().starts_with("line 3:"), "{err}");
    engine
        .write_lines(b"later,host=d value=4 50\n", 1)
        .expect("later request");
    let check = |engine: &Engine| {
        let raw = |metric: &str| match engine.query(&Query::new(metric)).expect("query") {
            QueryResult::Raw(series) => series
                .into_iter()
                .map(|s| (s.tags["host"].clone(), s.points))
                .collect::<Vec<_>>(),
            QueryResult::Aggregated(_) => panic!("raw expected"),
        };
        assert_eq!(raw("kept"), [("a".to_string(), vec![(10, 1.0)])]);
        assert!(raw("ghost").is_empty());
        assert_eq!(raw("later"), [("d".to_string(), vec![(50, 4.0)])]);
        assert_eq!(engine.stats().expect("stats").series, 2);
    };
    check(&engine);
    drop(engine);
    let engine = Engine::open(dir.path(), options()).expect("reopen");
    check(&engine);
}

// Protects: a request over its point limit, or with a series key too long
// for a series record, is refused whole, before anything is written.
#[test]
fn oversized_requests_write_nothing() {
    use chronicle_engine::lineproto::Precision;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), options()).expect("open");
    let err = engine
        .write_lines_in(
            b"a value=1 1\nb value=2 2\nc value=3 3\n",
            1,
            Precision::Nanoseconds,
            2,
        )
        .expect_err("over the limit");
    assert!(err.to_string().contains("more than 2 points"), "{err}");
    let long = format!("{} value=1 1\n", "m".repeat(70_000));
    let err = engine
        .write_lines(long.as_bytes(), 1)
        .expect_err("key too long");
    assert!(err.to_string().contains("65,535"), "{err}");
    let huge_tag = Point {
        series: SeriesKey::new("m", vec![("t".into(), "v".repeat(70_000))]),
        timestamp: 1,
        value: 1.0,
    };
    assert!(engine.write(&[huge_tag]).is_err());
    let err = engine
        .write_lines(b"ok value=1 1\nbad,host=\xff\xfe value=1 1\n", 1)
        .expect_err("not UTF-8");
    assert!(err.to_string().starts_with("line 2:"), "{err}");
    assert_eq!(engine.stats().expect("stats").series, 0);
    assert_eq!(engine.stats().expect("stats").points, 0);
}

/// A group's windows as (start, the value's bits, count).
type GroupBits = (Option<String>, Vec<(i64, u64, u64)>);

/// The windows of `model`'s series of `metric`, each series added whole
/// in one slice (in series order), grouped by `group_by`.
fn model_windows(
    model: &Model,
    metric: &str,
    width: i64,
    group_by: Option<&str>,
) -> BTreeMap<Option<String>, chronicle_engine::query::Windows> {
    let mut whole: BTreeMap<Option<String>, chronicle_engine::query::Windows> = BTreeMap::new();
    for (key, points) in model.iter().filter(|(k, _)| k.metric == metric) {
        let group = group_by.map(|tag| key.tag(tag).unwrap_or("").to_string());
        let (ts, vals): (Vec<i64>, Vec<f64>) = points.iter().map(|(&t, &v)| (t, v)).unzip();
        whole.entry(group).or_default().add_all(width, &ts, &vals);
    }
    whole
}

// Protects: a query reads a series one hour partition at a time (so that
// it never holds a whole long series); windows that span partitions (70
// s, 7 minutes, a day) come out bit for bit as from the whole series in
// one slice, with points in several segments an hour, rewrites in later
// segments and in the memtable, and groups of several series.
#[test]
fn windows_across_partitions_match_the_whole_series() {
    let (_, mut rng) = seeded_rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), options()).expect("open");
    let mut model = Model::new();
    let s = 1_000_000_000i64;
    let start = 1_700_000_000 * s;
    let point = |host: usize, i: i64, value: f64| Point {
        series: key(host, 0),
        timestamp: start + i * 30 * s,
        value,
    };
    let mut batch = Vec::new();
    for i in 0..3000i64 {
        for host in 0..3 {
            batch.push(point(host, i, rng.random_range(-1e3..1e3)));
        }
        if batch.len() >= 600 {
            write_both(&e, &mut model, &batch);
            batch.clear();
        }
    }
    write_both(&e, &mut model, &batch);
    e.flush().expect("flush");
    // Rewrites: some flushed to segments of their own, some left in memory.
    for round in 0..2 {
        let rewrites: Vec<Point> = (0..300)
            .map(|_| {
                let i = rng.random_range(0..3000i64);
                point(rng.random_range(0..3), i, rng.random_range(-1e6..1e6))
            })
            .collect();
        write_both(&e, &mut model, &rewrites);
        if round == 0 {
            e.flush().expect("flush");
        }
    }
    let stats = e.stats().expect("stats");
    assert!(stats.points_in_memory > 0, "{stats:?}");
    assert!(stats.segments > stats.partitions, "{stats:?}");
    let aggregates = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Mean,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::First,
        Aggregate::Last,
        Aggregate::Stddev,
    ];
    for width in [70 * s, 7 * 60 * s, 3600 * s, 86_400 * s] {
        for group_by in [None, Some("dc")] {
            let whole = model_windows(&model, "m0", width, group_by);
            for agg in aggregates {
                let mut q = Query::new("m0");
                q.window = Some((width, agg));
                q.group_by = group_by.map(str::to_string);
                let QueryResult::Aggregated(got) = e.query(&q).expect("query") else {
                    panic!("an aggregated query answered with points")
                };
                let want: Vec<GroupBits> = whole
                    .iter()
                    .map(|(g, w)| {
                        let windows = w
                            .by_start
                            .iter()
                            .map(|(&t, acc)| (t, acc.result(agg).to_bits(), acc.count))
                            .collect();
                        (g.clone(), windows)
                    })
                    .collect();
                let got: Vec<GroupBits> = got
                    .iter()
                    .map(|g| {
                        let windows = g
                            .windows
                            .iter()
                            .map(|w| (w.start, w.value.to_bits(), w.count))
                            .collect();
                        (g.group.clone(), windows)
                    })
                    .collect();
                let differs = got.iter().zip(&want).find_map(|((g, gw), (w, ww))| {
                    let first = gw.iter().zip(ww).find(|(a, b)| a != b);
                    (g != w || gw.len() != ww.len() || first.is_some())
                        .then(|| format!("group {g:?}: {first:?} (got, wanted)"))
                });
                assert!(
                    got.len() == want.len() && differs.is_none(),
                    "width {width}, {agg:?}, group by {group_by:?}: {differs:?}"
                );
            }
        }
    }
}

// Protects: the limit on an answer counts what it holds: an aggregated
// query whose groups come back in turn (series in key order alternate
// between them) is answered at exactly its number of windows and refused
// one below; a raw query likewise at its number of points.
#[test]
fn answers_are_refused_just_past_their_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(dir.path(), options()).expect("open");
    let s = 1_000_000_000i64;
    // Series in key order: a=1 (g=p), a=2 (g=q), a=3 (g=p).
    let series = |a: &str, g: &str| {
        SeriesKey::new("m", vec![("a".into(), a.into()), ("g".into(), g.into())])
    };
    let keys = [series("1", "p"), series("2", "q"), series("3", "p")];
    let points: Vec<Point> = keys
        .iter()
        .enumerate()
        .flat_map(|(n, key)| {
            (0..500i64).map(move |i| Point {
                series: key.clone(),
                timestamp: 1_700_000_000 * s + i * 61 * s + n as i64 * 7 * s,
                value: i as f64,
            })
        })
        .collect();
    e.write(&points).expect("write");
    e.flush().expect("flush");
    let mut q = Query::new("m");
    q.window = Some((300 * s, Aggregate::Mean));
    q.group_by = Some("g".into());
    let answer = e.query(&q).expect("query");
    let windows = answer.answer_size();
    let QueryResult::Aggregated(groups) = &answer else {
        panic!("windows expected")
    };
    assert_eq!(groups.len(), 2);
    assert!(windows > 100, "{windows}");
    assert_eq!(
        e.query_at_most(&q, windows).expect("query").as_ref(),
        Some(&answer)
    );
    assert!(e.query_at_most(&q, windows - 1).expect("query").is_none());
    let raw = Query::new("m");
    assert!(e.query_at_most(&raw, 1500).expect("query").is_some());
    assert!(e.query_at_most(&raw, 1499).expect("query").is_none());
}
