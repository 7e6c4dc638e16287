//! Exponential back-off with jitter, and a small random source (no `rand` crate: the jitter
//! only has to spread a fleet's retries, not be unpredictable).
#![forbid(unsafe_code)]

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// A Mutex, not an AtomicU64: 32-bit MIPS (mips/mipsel-unknown-linux-musl, most OpenWrt
// routers) has no 64-bit atomics, so `AtomicU64` does not exist there.
static SEED: Mutex<u64> = Mutex::new(0);

/// A pseudo-random u64 (xorshift64*, seeded from the clock and the pid).
pub fn random_u64() -> u64 {
    let mut seed = SEED.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = *seed;
    if s == 0 {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        s = t ^ (u64::from(std::process::id()) << 32) | 1;
    }
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    *seed = s;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A uniformly random duration in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    if ms < 2 {
        return d;
    }
    let half = ms / 2;
    Duration::from_millis(half + random_u64() % (ms - half + 1))
}

/// Doubling delays from `min` to `max`; [`Backoff::next_delay`] is jittered when asked.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
    jittered: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, jittered: bool) -> Self {
        Backoff {
            min,
            max,
            cur: min,
            jittered,
        }
    }

    /// The delay to wait now; the next one is twice as long, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        if self.jittered {
            jitter(d).max(self.min.min(d))
        } else {
            d
        }
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), false);
        let seq: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(seq, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), true);
        for _ in 0..10 {
            b.next_delay();
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = jitter(Duration::from_secs(60));
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60));
            seen.insert(d.as_millis());
            let n = b.next_delay();
            assert!(n >= Duration::from_secs(1) && n <= Duration::from_secs(60));
        }
        assert!(seen.len() > 50, "jitter varies");
    }
}
