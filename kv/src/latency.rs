//! A latency histogram cheap enough for every write and every node call: fixed buckets of
//! relaxed atomic counts, read for `/metrics` (Prometheus' cumulative `le` buckets).
//! Hand-written: a registry crate would put a lock or a map lookup on these paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (100 µs to 5 s, about ×2.5 apart).
pub const BOUNDS_US: [u64; 14] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

#[derive(Debug, Default)]
pub struct Latency {
    /// One count per bound, and one past the last.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Cumulative counts at each bound of [`BOUNDS_US`], then the total.
    pub cumulative: Vec<u64>,
    pub sum_us: u64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let at = BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(BOUNDS_US.len());
        if let Some(bucket) = self.buckets.get(at) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        LatencySnapshot { cumulative, sum_us: self.sum_us.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_in_their_buckets_cumulatively() {
        let h = Latency::default();
        h.observe(Duration::from_micros(90));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 2, "≤ 100 µs");
        assert_eq!(s.cumulative[4], 2, "≤ 2.5 ms");
        assert_eq!(s.cumulative[5], 3, "≤ 5 ms");
        assert_eq!(s.cumulative[BOUNDS_US.len() - 1], 3);
        assert_eq!(*s.cumulative.last().unwrap(), 4, "the total counts the one past every bound");
        assert_eq!(s.sum_us, 90 + 100 + 3000 + 60_000_000);
    }
}
