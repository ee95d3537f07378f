//! The server's own figures, rendered in the Prometheus text format for
//! `GET /metrics` together with the engine's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chronicle_engine::{Activity, Options, Stats};

/// Upper bounds (seconds) of the write-latency histogram's buckets: from a
/// write that needs no fsync to one that waits behind a slow disk.
const LATENCY_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default)]
pub struct Metrics {
    points_written: AtomicU64,
    /// Per bucket of LATENCY_BUCKETS, then +Inf: acknowledged writes.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    /// (route, status) → responses. Routes are the fixed set `route_label`
    /// returns, so a scanner cannot grow this map.
    responses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Per `Slot`: requests answered 503 because no slot came free in time.
    slot_timeouts: [AtomicU64; 2],
}

/// The two kinds of slot a request may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Write,
    Read,
}

impl Slot {
    pub fn label(self) -> &'static str {
        match self {
            Slot::Write => "write",
            Slot::Read => "read",
        }
    }
}

/// The server's room at a moment: write and read slots free, and
/// connections open against their limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Room {
    pub write: usize,
    pub read: usize,
    pub connections_open: usize,
    pub connection_limit: usize,
}

/// The label for a request path: a known route, or `other`.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/write" => "/write",
        "/api/v2/write" => "/api/v2/write",
        "/api/v1/query" => "/api/v1/query",
        "/api/v1/export" => "/api/v1/export",
        "/health" => "/health",
        "/ping" => "/ping",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

impl Metrics {
    /// An acknowledged write of `points` that took `elapsed`.
    pub fn write_acknowledged(&self, points: u64, elapsed: Duration) {
        self.points_written.fetch_add(points, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn responded(&self, route: &'static str, status: u16) {
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        *responses.entry((route, status)).or_default() += 1;
    }

    /// A request answered 503 after waiting for a `slot` in vain.
    pub fn slot_wait_timed_out(&self, slot: Slot) {
        self.slot_timeouts[slot as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn points_written(&self) -> u64 {
        self.points_written.load(Ordering::Relaxed)
    }

    /// Every figure, in the Prometheus text exposition format.
    /// `options` gives the database's limits, beside what it holds.
    pub fn render(
        &self,
        stats: &Stats,
        activity: &Activity,
        options: &Options,
        room: Room,
    ) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "chronicle_points_written_total",
            "counter",
            "Points acknowledged to HTTP clients.",
            self.points_written(),
        );
        metric(
            "chronicle_wal_syncs_total",
            "counter",
            "fsyncs of the write-ahead log (one covers every writer waiting on it).",
            activity.wal_syncs,
        );
        metric(
            "chronicle_flushes_total",
            "counter",
            "Memtables written out as segments.",
            activity.flushes,
        );
        metric(
            "chronicle_compactions_total",
            "counter",
            "Compactions that merged segments.",
            activity.compactions,
        );
        metric(
            "chronicle_series_forgotten_total",
            "counter",
            "Series forgotten once retention left them without points.",
            activity.series_forgotten,
        );
        metric(
            "chronicle_segments",
            "gauge",
            "Segments in the manifest.",
            stats.segments,
        );
        metric("chronicle_series", "gauge", "Series known.", stats.series);
        metric(
            "chronicle_series_limit",
            "gauge",
            "Series the database may hold (--max-series); writes past it get 422.",
            options.max_series as u64,
        );
        metric(
            "chronicle_partitions",
            "gauge",
            "Hour partitions in the segments.",
            stats.partitions,
        );
        metric(
            "chronicle_partition_limit",
            "gauge",
            "Hour partitions the database may hold (--max-partitions); writes past it get 422.",
            options.max_partitions as u64,
        );
        metric(
            "chronicle_points",
            "gauge",
            "Points stored, in segments and in memory.",
            stats.points,
        );
        metric(
            "chronicle_points_in_memory",
            "gauge",
            "Points in the memtable (durable in the WAL).",
            stats.points_in_memory,
        );
        metric(
            "chronicle_disk_bytes",
            "gauge",
            "Bytes of the database's files (plaintext sizes; on a mount the ciphertext is larger).",
            stats.bytes_on_disk,
        );
        self.render_latency(&mut out);
        self.render_responses(&mut out);
        self.render_room(&mut out, room);
        out
    }

    fn render_room(&self, out: &mut String, room: Room) {
        let name = "chronicle_http_slots_free";
        let _ = writeln!(
            out,
            "# HELP {name} Write and read slots free now (a request takes one while it runs).\n\
             # TYPE {name} gauge\n\
             {name}{{kind=\"write\"}} {}\n{name}{{kind=\"read\"}} {}",
            room.write, room.read
        );
        let name = "chronicle_http_connections_open";
        let _ = writeln!(
            out,
            "# HELP {name} Client connections open now.\n# TYPE {name} gauge\n{name} {}",
            room.connections_open
        );
        let name = "chronicle_http_connection_limit";
        let _ = writeln!(
            out,
            "# HELP {name} Connections served at once (--max-connections); more wait to be accepted.\n\
             # TYPE {name} gauge\n{name} {}",
            room.connection_limit
        );
        let name = "chronicle_http_slot_timeouts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests answered 503 because no slot came free in time.\n\
             # TYPE {name} counter"
        );
        for slot in [Slot::Write, Slot::Read] {
            let n = self.slot_timeouts[slot as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {n}", slot.label());
        }
    }

    fn render_latency(&self, out: &mut String) {
        let name = "chronicle_write_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a write request's arrival to its acknowledgement.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }

    fn render_responses(&self, out: &mut String) {
        let name = "chronicle_http_responses_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP responses by route and status.\n# TYPE {name} counter"
        );
        let responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), n) in responses.iter() {
            let _ = writeln!(out, "{name}{{route=\"{route}\",code=\"{status}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the histogram is cumulative and its count matches the
    // writes; every family has HELP and TYPE lines.
    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.write_acknowledged(10, Duration::from_micros(300));
        m.write_acknowledged(5, Duration::from_millis(20));
        m.write_acknowledged(1, Duration::from_secs(9));
        m.responded(route_label("/write"), 204);
        m.responded(route_label("/wp-admin"), 404);
        m.slot_wait_timed_out(Slot::Read);
        let room = Room {
            write: 4,
            read: 3,
            connections_open: 2,
            connection_limit: 1024,
        };
        let stats = Stats {
            series: 7,
            partitions: 3,
            ..Stats::default()
        };
        let text = m.render(&stats, &Activity::default(), &Options::default(), room);
        assert!(text.contains("chronicle_series 7\n"));
        assert!(text.contains("chronicle_series_limit 1000000\n"));
        assert!(text.contains("chronicle_partitions 3\n"));
        assert!(text.contains("chronicle_partition_limit 20000\n"));
        assert!(
            text.contains("chronicle_points_written_total 16\n"),
            "{text}"
        );
        assert!(text.contains("chronicle_write_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("chronicle_write_duration_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("chronicle_write_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chronicle_write_duration_seconds_count 3\n"));
        assert!(text.contains("chronicle_http_responses_total{route=\"other\",code=\"404\"} 1\n"));
        assert!(
            text.contains("chronicle_http_slots_free{kind=\"read\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("chronicle_http_slot_timeouts_total{kind=\"read\"} 1\n"));
        assert!(
            text.contains("chronicle_http_connections_open 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chronicle_http_connection_limit 1024\n"),
            "{text}"
        );
        assert!(text.contains("chronicle_http_slot_timeouts_total{kind=\"write\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().expect("name");
            let family = family
                .strip_suffix("_bucket")
                .or_else(|| family.strip_suffix("_sum"))
                .or_else(|| family.strip_suffix("_count"))
                .unwrap_or(family);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE for {line}"
            );
        }
    }
}
