//! A deterministic metrics workload, the same on every machine, for the
//! engine's benchmarks (`cargo bench -p chronicle-engine`, `chronicle
//! engine bench`): 100 hosts × 3 series at a 10-second interval: a CPU
//! gauge with one decimal that moves in steps of 0.5, a memory gauge that
//! changes by multiples of 4096 in 5 % of the samples, and a monotonic
//! request counter, as line protocol; and a late batch of corrections that
//! rewrites 1 % of the CPU points (last write wins).

use std::io::Write;

pub const HOSTS: usize = 100;
pub const SERIES_PER_HOST: u64 = 3;
/// 10 seconds, in nanoseconds.
pub const STEP: i64 = 10_000_000_000;
/// 2025-11-29T08:00:00Z.
pub const START: i64 = 1_764_403_200_000_000_000;
/// The value every rewritten CPU point gets.
pub const REWRITTEN_VALUE: f64 = 100.0;
/// One sample in this many of each CPU series is rewritten.
const REWRITE_EVERY: u64 = 100;

/// splitmix64: a fixed, well-mixed sequence, the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Each host's gauges and counter.
struct Host {
    cpu_tenths: i64,
    mem_bytes: i64,
    requests: u64,
}

pub struct Workload {
    rng: Rng,
    hosts: Vec<Host>,
    next_sample: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Self::new()
    }
}

impl Workload {
    pub fn new() -> Workload {
        Workload {
            rng: Rng(20261130),
            hosts: (0..HOSTS as i64)
                .map(|h| Host {
                    cpu_tenths: 200 + (h % 7) * 50,
                    mem_bytes: (4 << 30) + h * (64 << 20),
                    requests: 0,
                })
                .collect(),
            next_sample: 0,
        }
    }

    /// Samples (one point of every series each) in `points` points.
    pub fn samples_in(points: u64) -> u64 {
        points / (HOSTS as u64 * SERIES_PER_HOST)
    }

    /// Appends the next `samples` samples of every series as line protocol.
    pub fn next_lines(&mut self, samples: u64, out: &mut Vec<u8>) {
        for _ in 0..samples {
            self.sample(out);
        }
    }

    fn sample(&mut self, out: &mut Vec<u8>) {
        let ts = START + self.next_sample as i64 * STEP;
        self.next_sample += 1;
        for (h, host) in self.hosts.iter_mut().enumerate() {
            if self.rng.chance(30) {
                let step = if self.rng.chance(50) { 5 } else { -5 };
                host.cpu_tenths = (host.cpu_tenths + step).clamp(0, 1000);
            }
            if self.rng.chance(5) {
                let pages = (self.rng.next_u64() % 129) as i64 - 64;
                host.mem_bytes += pages * 4096;
            }
            host.requests += self.rng.next_u64() % 200;
            let cpu = host.cpu_tenths as f64 / 10.0;
            let dc = h % 3;
            let _ = writeln!(
                out,
                "cpu_usage,host=host-{h:03},dc=dc-{dc} value={cpu:.1} {ts}"
            );
            let _ = writeln!(
                out,
                "mem_used,host=host-{h:03},dc=dc-{dc} value={} {ts}",
                host.mem_bytes
            );
            let _ = writeln!(
                out,
                "http_requests_total,host=host-{h:03},dc=dc-{dc} value={} {ts}",
                host.requests
            );
        }
    }

    /// The corrections for the samples written so far: 1 % of the CPU
    /// points get `REWRITTEN_VALUE`. Returns how many points they are.
    pub fn rewrites(&self, out: &mut Vec<u8>) -> u64 {
        let mut n = 0;
        for s in (0..self.next_sample).step_by(REWRITE_EVERY as usize) {
            let ts = START + s as i64 * STEP;
            for h in 0..HOSTS {
                let _ = writeln!(
                    out,
                    "cpu_usage,host=host-{h:03},dc=dc-{} value={REWRITTEN_VALUE:.1} {ts}",
                    h % 3
                );
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the workload is the same on every run (benchmarks compare
    // runs), and is what it says: three series per host, one line each.
    #[test]
    fn deterministic_and_as_described() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Workload::new().next_lines(10, &mut a);
        Workload::new().next_lines(10, &mut b);
        assert_eq!(a, b);
        let text = String::from_utf8(a).expect("utf-8");
        assert_eq!(text.lines().count(), 10 * HOSTS * SERIES_PER_HOST as usize);
        assert!(
            text.starts_with("cpu_usage,host=host-000,dc=dc-0 value=20.0 1764403200000000000\n")
        );
        let mut w = Workload::new();
        w.next_lines(200, &mut Vec::new());
        let mut rewrites = Vec::new();
        assert_eq!(w.rewrites(&mut rewrites), 2 * HOSTS as u64);
    }
}
