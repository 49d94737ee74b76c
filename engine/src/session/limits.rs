//! Token buckets that cap how fast a connection, and an account across its sessions, may send
//! message-class frames (90–97): a flooding client gets 5104 for the frames over its rate and
//! cannot take the server's time from others.

use std::time::Instant;

/// A rate: `per_second` tokens added per second, at most `burst` held; `per_second` 0 means
/// no limit.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// The tokens left, as of `stamp`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    stamp: Instant,
}

impl Bucket {
    pub fn full(rate: Rate) -> Self {
        Self { tokens: rate.burst as f32, stamp: Instant::now() }
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        if rate.per_second == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate.per_second as f32).min(rate.burst as f32);
        self.stamp = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate { per_second: 10, burst: 5 };
        let start = Instant::now();
        let mut bucket = Bucket { tokens: 5.0, stamp: start };
        assert_eq!((0..8).filter(|_| bucket.take(rate, start)).count(), 5, "the burst, then nothing");
        let later = start + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| bucket.take(rate, later)).count(), 3, "10 per second refill 3 in 0.3 s");
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(rate, much_later)).count(), 5, "never more than the burst");
        let unlimited = Rate { per_second: 0, burst: 0 };
        assert!((0..1000).all(|_| bucket.take(unlimited, much_later)));
    }
}
