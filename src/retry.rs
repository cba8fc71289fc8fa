//! The retry schedule of failed platform calls.
//!
//! backon supplies the capped exponential sequence; the delay actually used is drawn
//! uniformly between zero and that ceiling ("full jitter"), so commands that failed
//! together do not come back together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

use crate::config::RetryConfig;

/// When to try a failed command again, and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    factor: f64,
    max_delay: Duration,
    max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts,
            initial_delay: config.initial_delay,
            factor: config.factor,
            max_delay: config.max_delay,
            max_retry_after: config.max_retry_after,
        }
    }

    /// Whether a command that has made `attempts` attempts may make another.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The longest delay after the `failures`-th failed attempt (1 for the first):
    /// min(max_delay, initial_delay x factor^(failures - 1)).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let steps = failures.max(1) as usize;
        ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_factor(self.factor as f32)
            .with_max_delay(self.max_delay)
            .with_max_times(steps)
            .build()
            .nth(steps - 1)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay before the next attempt after the `failures`-th failure. A delay the
    /// platform asked for in `Retry-After` wins over the backoff, up to
    /// `max_retry_after`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(requested) => requested.min(self.max_retry_after),
            None => full_jitter(self.ceiling(failures), &mut rand::rng()),
        }
    }
}

/// Draws a delay uniformly from zero to `ceiling`.
pub fn full_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.random_range(0..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            initial_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(900),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let policy = policy();
        let ceilings: Vec<u64> = (1..=10)
            .map(|failures| policy.ceiling(failures).as_secs())
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    }

    #[test]
    fn jittered_delay_stays_under_the_ceiling() {
        let policy = policy();
        for failures in 1..=8 {
            for _ in 0..100 {
                assert!(policy.delay(failures, None) <= policy.ceiling(failures));
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = rand::rng();
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| full_jitter(Duration::from_secs(30), &mut rng))
            .collect();
        assert!(delays.len() > 40, "delays are not spread: {}", delays.len());
    }

    #[test]
    fn retry_after_wins_and_is_clamped() {
        let policy = policy();
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = policy();
        assert!(policy.may_retry(7));
        assert!(!policy.may_retry(8));
    }
}
