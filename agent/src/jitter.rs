//! A small random source for lease ids and retry jitter. It needs no dependency: it is
//! seeded from the standard library's per-process random hash keys and steps with
//! SplitMix64, which is plenty for spreading retries and picking 63-bit ids; nothing here
//! is secret.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded differently in every process and for every call.
    pub fn seeded() -> Rng {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Rng(h.finish())
    }

    /// A generator that always gives the same sequence (tests).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A positive lease id (etcd's ids are positive int64s; 0 means "the server picks").
    pub fn lease_id(&mut self) -> i64 {
        ((self.next_u64() >> 1) as i64).max(1)
    }

    /// A duration drawn uniformly from `[d/2, d]`: retries of many clients that failed
    /// together spread over half the delay, while no retry comes sooner than half of it.
    pub fn jitter(&mut self, d: Duration) -> Duration {
        let half = d / 2;
        let span = (d - half).as_micros() as u64;
        if span == 0 {
            return d;
        }
        half + Duration::from_micros(self.next_u64() % (span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half_and_spreads() {
        let mut r = Rng::from_seed(7);
        let d = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..1000).map(|_| r.jitter(d)).collect();
        assert!(draws.iter().all(|x| *x >= d / 2 && *x <= d));
        let low = draws.iter().filter(|x| **x < d * 3 / 4).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 3/4");
        assert_eq!(r.jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn lease_ids_are_positive_and_distinct() {
        let mut r = Rng::from_seed(0);
        let ids: std::collections::HashSet<i64> = (0..10_000).map(|_| r.lease_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| *id > 0));
    }

    #[test]
    fn seeded_generators_differ() {
        assert_ne!(Rng::seeded().next_u64(), Rng::seeded().next_u64());
    }
}
