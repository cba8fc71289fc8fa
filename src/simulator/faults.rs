//! Fault rules, the global rate limit and the latency distribution: everything the
//! simulator decides about a request before it reaches a handler.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::{ConfigError, Latency, RateLimit};
use super::rql::Pattern;

/// A fault to inject into matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// HTTP method to match, such as `POST`; absent or `*` matches any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path glob, such as `/public/v1/accounts/erp-links/*/block`. `*` matches any run
    /// of characters, `/` included. The query string is not part of the path.
    pub path: String,
    /// Number of requests that get the fault; afterwards the rule is spent and removed.
    /// Absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Chance, from 0 to 1, that a matching request gets the fault. The draws come from
    /// a generator seeded with the simulator's seed and the rule's id, so the same
    /// requests give the same faults on every run. Absent means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Whether the request is handled normally before the fault shows, so an action
    /// takes effect but its response is lost or replaced. Applies to `status`, `hang` and
    /// `close_connection`; `delay` and `stall_body` always handle the request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub process_request: bool,
    /// Effect on a matching request.
    pub fault: Fault,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Effect of a fault rule on a request it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Respond with this status and a Problem Details body.
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<RetryAfter>,
        /// Problem Details `detail`; a generic sentence when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Wait, then respond normally.
    Delay {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Never respond; the connection stays open until the client gives up.
    Hang,
    /// Send the status line, the headers (with the full `Content-Length`) and the first
    /// half of the normal body, then stall forever.
    StallBody,
    /// Close the TCP connection without any HTTP response.
    CloseConnection {
        /// Send a TCP reset (RST) instead of a normal close (FIN).
        #[serde(default, skip_serializing_if = "is_false")]
        reset: bool,
    },
}

/// Value of a `Retry-After` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfter {
    /// A number of seconds: `Retry-After: 5`.
    Seconds(u64),
    /// An HTTP date this many seconds after the response:
    /// `Retry-After: Fri, 04 Dec 2026 10:15:07 GMT`.
    HttpDate(u64),
}

impl FaultRule {
    /// A rule for every method on `path`, applied to every matching request.
    pub fn new(path: impl Into<String>, fault: Fault) -> Self {
        Self {
            method: None,
            path: path.into(),
            times: None,
            probability: None,
            process_request: false,
            fault,
        }
    }

    /// Restricts the rule to one HTTP method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Applies the rule to the next `times` matching requests only.
    pub fn times(mut self, times: u64) -> Self {
        self.times = Some(times);
        self
    }

    /// Applies the rule to a matching request with this probability.
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = Some(probability);
        self
    }

    /// Handles the request normally before the fault shows.
    pub fn process_request(mut self) -> Self {
        self.process_request = true;
        self
    }

    /// Checks the rule; the error's key is relative to the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') && self.path != "*" {
            return Err(ConfigError::new(
                "path",
                format!("`{}` must start with `/` (or be `*`)", self.path),
            ));
        }
        if let Some(method) = &self.method
            && (method.is_empty()
                || !method
                    .bytes()
                    .all(|byte| byte.is_ascii_alphabetic() || byte == b'*'))
        {
            return Err(ConfigError::new(
                "method",
                format!("`{method}` is not an HTTP method"),
            ));
        }
        if let Some(probability) = self.probability
            && !(0.0..=1.0).contains(&probability)
        {
            return Err(ConfigError::new(
                "probability",
                format!("{probability} is outside 0..=1"),
            ));
        }
        if let Fault::Status { status, .. } = self.fault
            && !(100..=599).contains(&status)
        {
            return Err(ConfigError::new(
                "fault.status",
                format!("{status} is not an HTTP status"),
            ));
        }
        Ok(())
    }
}

impl Fault {
    /// Builds a status fault without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            retry_after: None,
            detail: None,
        }
    }

    /// Builds a status fault with `Retry-After`.
    pub fn status_retry_after(status: u16, retry_after: RetryAfter) -> Self {
        Fault::Status {
            status,
            retry_after: Some(retry_after),
            detail: None,
        }
    }

    /// Returns the name used in the request log and the statistics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "status",
            Fault::Delay { .. } => "delay",
            Fault::Hang => "hang",
            Fault::StallBody => "stall_body",
            Fault::CloseConnection { .. } => "close_connection",
        }
    }
}

/// A fault rule in force, as `GET /_sim/faults` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFault {
    /// Id to remove the rule with (`DELETE /_sim/faults/{id}`).
    pub id: u64,
    /// Number of requests that got the fault so far.
    pub applied: u64,
    pub rule: FaultRule,
}

/// Decision about one request.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    /// Extra delay from the latency distribution.
    pub latency: Option<Duration>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Normal,
    /// 429 from the global rate limit, with `Retry-After` in seconds.
    RateLimited {
        retry_after: u64,
    },
    Fault {
        rule_id: u64,
        fault: Fault,
        process_request: bool,
    },
}

struct RuleState {
    active: ActiveFault,
    path: Pattern,
    rng: ChaCha8Rng,
}

/// Fault rules, the rate limiter and the latency generator, behind one lock.
pub(crate) struct Gate {
    seed: u64,
    next_id: u64,
    rules: Vec<RuleState>,
    limiter: Option<TokenBucket>,
    latency_rng: ChaCha8Rng,
}

impl Gate {
    pub(crate) fn new(seed: u64) -> Self {
        let mut latency_rng = ChaCha8Rng::seed_from_u64(seed);
        // Rule streams start at 1, so stream 0 is for latency draws only.
        latency_rng.set_stream(0);
        Self {
            seed,
            next_id: 1,
            rules: Vec::new(),
            limiter: None,
            latency_rng,
        }
    }

    /// Adds a rule after validating it and returns its id.
    pub(crate) fn add(&mut self, rule: FaultRule) -> Result<u64, ConfigError> {
        rule.validate()?;
        let id = self.next_id;
        self.next_id += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(id);
        self.rules.push(RuleState {
            path: Pattern::glob(&rule.path),
            active: ActiveFault {
                id,
                applied: 0,
                rule,
            },
            rng,
        });
        Ok(id)
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|state| state.active.id != id);
        self.rules.len() != before
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn list(&self) -> Vec<ActiveFault> {
        self.rules
            .iter()
            .map(|state| state.active.clone())
            .collect()
    }

    /// Decides the fate of one API request: the rate limit first, then the first rule
    /// that matches and fires. A rate-limited request uses up no rule.
    pub(crate) fn decide(
        &mut self,
        method: &str,
        path: &str,
        now: Instant,
        rate_limit: Option<&RateLimit>,
        latency: Option<&Latency>,
    ) -> Decision {
        let latency =
            latency.map(|distribution| sample_latency(distribution, &mut self.latency_rng));

        if self.limiter.as_ref().map(|bucket| &bucket.limit) != rate_limit {
            self.limiter = rate_limit.map(|limit| TokenBucket::new(limit.clone(), now));
        }
        if let Some(bucket) = &mut self.limiter
            && let Err(retry_after) = bucket.try_take(now)
        {
            return Decision {
                latency,
                outcome: Outcome::RateLimited { retry_after },
            };
        }

        let mut fired = None;
        for (position, state) in self.rules.iter_mut().enumerate() {
            if !state.matches(method, path) {
                continue;
            }
            // Every matching request draws, fired or not, so the outcome of request N
            // depends only on the seed, the rule id and N.
            let fires = match state.active.rule.probability {
                Some(probability) => state.rng.random_bool(probability),
                None => true,
            };
            if fires {
                fired = Some(position);
                break;
            }
        }
        let Some(position) = fired else {
            return Decision {
                latency,
                outcome: Outcome::Normal,
            };
        };

        let state = &mut self.rules[position];
        state.active.applied += 1;
        let outcome = Outcome::Fault {
            rule_id: state.active.id,
            fault: state.active.rule.fault.clone(),
            process_request: state.active.rule.process_request,
        };
        if state
            .active
            .rule
            .times
            .is_some_and(|times| state.active.applied >= times)
        {
            self.rules.remove(position);
        }
        Decision { latency, outcome }
    }
}

impl RuleState {
    fn matches(&self, method: &str, path: &str) -> bool {
        let method_matches = match self.active.rule.method.as_deref() {
            None | Some("*") => true,
            Some(wanted) => wanted.eq_ignore_ascii_case(method),
        };
        method_matches && self.path.matches(path, false)
    }
}

/// A token bucket refilled continuously at `per_second`.
struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.capacity(),
            limit,
            updated: now,
        }
    }

    /// Takes a token, or returns the whole seconds until one is available (at least 1).
    fn try_take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.capacity());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.limit.per_second;
        Err((wait.ceil() as u64).max(1))
    }
}

fn sample_latency(distribution: &Latency, rng: &mut ChaCha8Rng) -> Duration {
    match distribution {
        Latency::Fixed { delay } => *delay,
        Latency::Uniform { min, max } => {
            if min == max {
                *min
            } else {
                Duration::from_nanos(
                    rng.random_range(min.as_nanos() as u64..=max.as_nanos() as u64),
                )
            }
        }
        Latency::Normal { mean, std_dev } => {
            let draw = mean.as_secs_f64() + std_dev.as_secs_f64() * standard_normal(rng);
            Duration::from_secs_f64(draw.max(0.0))
        }
        Latency::LogNormal { mean, std_dev } => {
            // Parameters of the underlying normal distribution for the requested mean
            // and standard deviation of the delay itself.
            let mean = mean.as_secs_f64();
            let ratio = std_dev.as_secs_f64() / mean;
            let sigma_squared = (1.0 + ratio * ratio).ln();
            let mu = mean.ln() - sigma_squared / 2.0;
            let draw = (mu + sigma_squared.sqrt() * standard_normal(rng)).exp();
            Duration::from_secs_f64(draw.min(3600.0))
        }
    }
}

/// Draws from the standard normal distribution with the Box-Muller transform.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let uniform_a: f64 = 1.0 - rng.random::<f64>();
    let uniform_b: f64 = rng.random::<f64>();
    (-2.0 * uniform_a.ln()).sqrt() * (std::f64::consts::TAU * uniform_b).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_ids_and_nested_paths() {
        let rule = FaultRule::new("/public/v1/accounts/erp-links/*/block", Fault::Hang);
        let mut gate = Gate::new(1);
        gate.add(rule).unwrap();
        let now = Instant::now();
        let hit = gate.decide(
            "POST",
            "/public/v1/accounts/erp-links/ERP-1111-2222-3333/block",
            now,
            None,
            None,
        );
        assert!(matches!(hit.outcome, Outcome::Fault { .. }));
        let miss = gate.decide(
            "POST",
            "/public/v1/accounts/erp-links/ERP-1111-2222-3333/unblock",
            now,
            None,
            None,
        );
        assert!(matches!(miss.outcome, Outcome::Normal));
    }

    #[test]
    fn times_spends_the_rule() {
        let mut gate = Gate::new(1);
        gate.add(FaultRule::new("*", Fault::status(503)).times(2))
            .unwrap();
        let now = Instant::now();
        let outcomes: Vec<bool> = (0..3)
            .map(|_| {
                matches!(
                    gate.decide("GET", "/x", now, None, None).outcome,
                    Outcome::Fault { .. }
                )
            })
            .collect();
        assert_eq!(outcomes, [true, true, false]);
        assert!(gate.list().is_empty());
    }

    #[test]
    fn token_bucket_refills() {
        let limit = RateLimit {
            per_second: 2.0,
            burst: Some(2),
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit, start);
        assert!(bucket.try_take(start).is_ok());
        assert!(bucket.try_take(start).is_ok());
        assert_eq!(bucket.try_take(start), Err(1));
        assert!(bucket.try_take(start + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn log_normal_latency_has_roughly_the_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let distribution = Latency::LogNormal {
            mean: Duration::from_millis(20),
            std_dev: Duration::from_millis(10),
        };
        let total: f64 = (0..20_000)
            .map(|_| sample_latency(&distribution, &mut rng).as_secs_f64())
            .sum();
        let mean = total / 20_000.0;
        assert!((0.018..0.022).contains(&mean), "mean {mean}");
    }
}
