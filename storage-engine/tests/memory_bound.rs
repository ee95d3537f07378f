//! What the engine allocates to compact, query and export an hour of one
//! series with a million points in overlapping segments: a chunk of the
//! series at a time, not the hour decoded whole (16 bytes a point, 16 MB
//! here). Counted by this test binary's own allocator, so the file holds
//! one test: others running beside it would count too.

// A global allocator is an unsafe trait; this one only forwards to the
// system's and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chronicle_engine::{
    Aggregate, Engine, Options, Point, Query, QueryResult, SeriesKey, SyncPolicy,
};

/// The system allocator, counting the bytes held and the most held since
/// `Counting::reset`.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Counting::held(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        Counting::held(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Counting::held(new_size as isize - layout.size() as isize);
        }
        p
    }
}

impl Counting {
    fn held(change: isize) {
        let now = HELD
            .fetch_add(change as usize, Ordering::Relaxed)
            .wrapping_add(change as usize);
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    /// Starts a new peak from what is held now.
    fn reset() -> usize {
        let now = HELD.load(Ordering::Relaxed);
        PEAK.store(now, Ordering::Relaxed);
        now
    }

    /// The most held since `reset` returned `from`, beyond it.
    fn peak_above(from: usize) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(from)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const POINTS: i64 = 1_000_000;
/// An hour's start (2026-12-01T10:00:00Z), in nanoseconds.
const HOUR: i64 = 1_796_119_200_000_000_000;
/// Far below the 16 MB that the points decoded whole take.
const BOUND: usize = 6 << 20;

fn points(key: &SeriesKey, pass: i64) -> Vec<Point> {
    (0..POINTS)
        .map(|i| Point {
            series: key.clone(),
            timestamp: HOUR + i * 1_000,
            value: ((i * 7_919 + pass) % 1_000) as f64,
        })
        .collect()
}

// Protects: compaction, an aggregating query and export each hold a
// bounded chunk of a series at a time (engine::merged), where they held
// the whole hour of it decoded, which a client writing many points to one
// series could make as large as it liked.
#[test]
fn a_huge_hour_of_one_series_is_read_a_chunk_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        sync: SyncPolicy::Never,
        memtable_points: 2 * POINTS as usize,
        ..Options::default()
    };
    let e = Engine::open(dir.path(), options).expect("open");
    let key = SeriesKey::new("m", vec![("host".into(), "a".into())]);
    // Two segments of the same timestamps: the second wins each.
    for pass in 0..2 {
        for batch in points(&key, pass).chunks(100_000) {
            e.write(batch).expect("write");
        }
        e.flush().expect("flush");
    }

    let from = Counting::reset();
    e.compact().expect("compact");
    let compacting = Counting::peak_above(from);

    let mut q = Query::new("m");
    q.window = Some((60_000_000_000, Aggregate::Sum));
    let from = Counting::reset();
    let QueryResult::Aggregated(groups) = e.query(&q).expect("query") else {
        panic!("windows expected")
    };
    let querying = Counting::peak_above(from);
    let counted: u64 = groups
        .iter()
        .flat_map(|g| &g.windows)
        .map(|w| w.count)
        .sum();
    assert_eq!(counted, POINTS as u64);

    let from = Counting::reset();
    let exported = e.export_json(&mut std::io::sink()).expect("export");
    let exporting = Counting::peak_above(from);
    assert_eq!(exported, POINTS as u64);

    let peaks = [
        ("compaction", compacting),
        ("query", querying),
        ("export", exporting),
    ];
    println!("bytes held at the peak: {peaks:?}");
    for (what, peak) in peaks {
        assert!(
            peak < BOUND,
            "{what} held {peak} bytes at its peak (bound {BOUND})"
        );
    }
}
