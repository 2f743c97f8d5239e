//! Latency samples and the figures the report prints from them.

use std::time::Duration;

/// Every latency sample of one measurement, in the order taken.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
            sorted: false,
        }
    }

    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `q`-quantile (0 < q <= 1) by the nearest-rank method; `None` without samples.
    pub fn quantile(&mut self, q: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let rank = (q * self.samples.len() as f64).ceil() as usize;
        Some(self.samples[rank.clamp(1, self.samples.len()) - 1])
    }
}

/// A closed-loop run: how many operations completed in how long, and their latencies.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub ops: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl Throughput {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in (1..=100).rev() {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(l.quantile(0.0001), Some(Duration::from_millis(1)));
    }
}
