//! Pacing of every call to the platform: a maximum rate, and back-pressure when the
//! platform requests it.
//!
//! - With `platform.max_rate` set, calls start at least `1 / max_rate` seconds apart,
//!   so the rate is never exceeded and a backlog drains at the rate the platform
//!   allows instead of provoking 429s.
//! - A 429, or a 503 with `Retry-After`, stops every new call until the time the
//!   platform asked for (at most `platform.max_pause`), then halves the rate and raises
//!   it again by a tenth per second until the previous rate is reached.
//!
//! A hand-written bucket of one token, because the rate changes at run time; the
//! well-known rate limiter crates take a fixed quota.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lowest rate back-pressure slows to, in calls per second.
const MIN_RATE: f64 = 1.0;

/// Share of the rate added back every second after a slowdown.
const RAMP_UP_PER_SECOND: f64 = 0.1;

/// Paces the calls of every task that shares it.
#[derive(Debug)]
pub struct Throttle {
    max_pause: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// No call starts before this.
    not_before: Instant,
    /// The rate in force, in calls per second; `None` means no limit.
    rate: Option<f64>,
    /// The rate to return to after a slowdown.
    target: Option<f64>,
    /// Whether a maximum rate is configured; without one the limit is lifted once the
    /// rate is back at its target.
    limited: bool,
    last_ramp: Instant,
    /// Calls started in the current and the previous one-second window, to know the
    /// rate before a slowdown when there is no configured limit.
    window_start: Instant,
    window_calls: u32,
    previous_window_calls: u32,
}

impl Throttle {
    /// A throttle with an optional maximum rate in calls per second, and the longest
    /// pause a `Retry-After` can impose on every call.
    pub fn new(max_rate: Option<f64>, max_pause: Duration) -> Throttle {
        let now = Instant::now();
        Throttle {
            max_pause,
            state: Mutex::new(State {
                not_before: now,
                rate: max_rate,
                target: max_rate,
                limited: max_rate.is_some(),
                last_ramp: now,
                window_start: now,
                window_calls: 0,
                previous_window_calls: 0,
            }),
        }
    }

    /// Waits until a new call may start, and reserves its slot.
    pub async fn acquire(&self) {
        loop {
            let wait_until = {
                let mut state = self.state.lock().expect("throttle lock");
                let now = Instant::now();
                state.ramp_up(now);
                if state.not_before <= now {
                    state.count_call(now);
                    if let Some(rate) = state.rate {
                        state.not_before = now + Duration::from_secs_f64(1.0 / rate);
                    }
                    return;
                }
                state.not_before
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }

    /// Slows every call down after the platform asked for a pause: no call before
    /// `retry_after` from now (capped at the maximum pause), then half the rate.
    pub fn back_off(&self, retry_after: Duration) {
        let mut state = self.state.lock().expect("throttle lock");
        let now = Instant::now();
        let pause = retry_after.min(self.max_pause);
        state.not_before = state.not_before.max(now + pause);

        let current = state
            .rate
            .unwrap_or_else(|| f64::from(state.previous_window_calls.max(state.window_calls)));
        if state.target.is_none() {
            state.target = Some(current.max(MIN_RATE));
        }
        state.rate = Some((current / 2.0).max(MIN_RATE));
        state.last_ramp = now.max(state.not_before);
    }

    /// The rate in force now, in calls per second, or `None` without a limit.
    pub fn current_rate(&self) -> Option<f64> {
        self.state.lock().expect("throttle lock").rate
    }
}

impl State {
    /// Raises a lowered rate by a tenth for every second since the last raise, until it
    /// is back at its target; without a configured limit the limit is then lifted.
    fn ramp_up(&mut self, now: Instant) {
        let (Some(rate), Some(target)) = (self.rate, self.target) else {
            return;
        };
        if rate >= target || now <= self.last_ramp {
            return;
        }
        let seconds = (now - self.last_ramp).as_secs_f64();
        if seconds < 1.0 {
            return;
        }
        let raised = rate * (1.0 + RAMP_UP_PER_SECOND).powf(seconds.floor());
        self.last_ramp = now;
        if raised < target {
            self.rate = Some(raised);
        } else if self.limited {
            self.rate = Some(target);
        } else {
            self.rate = None;
            self.target = None;
        }
    }

    fn count_call(&mut self, now: Instant) {
        let elapsed = now - self.window_start;
        if elapsed >= Duration::from_secs(2) {
            self.previous_window_calls = 0;
            self.window_calls = 0;
            self.window_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            self.previous_window_calls = self.window_calls;
            self.window_calls = 0;
            self.window_start += Duration::from_secs(1);
        }
        self.window_calls = self.window_calls.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_at_the_maximum_rate() {
        let throttle = Throttle::new(Some(10.0), Duration::from_secs(30));
        let started = Instant::now();
        for _ in 0..11 {
            throttle.acquire().await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_throttle_does_not_wait() {
        let throttle = Throttle::new(None, Duration::from_secs(30));
        let started = Instant::now();
        for _ in 0..1000 {
            throttle.acquire().await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_pauses_then_halves_rate() {
        let throttle = Throttle::new(Some(20.0), Duration::from_secs(30));
        throttle.acquire().await;
        throttle.back_off(Duration::from_secs(2));

        let started = Instant::now();
        throttle.acquire().await;
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(throttle.current_rate(), Some(10.0));
    }

    #[tokio::test(start_paused = true)]
    async fn pause_is_capped() {
        let throttle = Throttle::new(None, Duration::from_secs(5));
        throttle.back_off(Duration::from_secs(86_400));
        let started = Instant::now();
        throttle.acquire().await;
        assert!(started.elapsed() <= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_ramps_back_up_to_the_limit() {
        let throttle = Throttle::new(Some(20.0), Duration::from_secs(30));
        throttle.back_off(Duration::ZERO);
        assert_eq!(throttle.current_rate(), Some(10.0));
        for _ in 0..200 {
            throttle.acquire().await;
        }
        assert_eq!(throttle.current_rate(), Some(20.0));
    }
}
