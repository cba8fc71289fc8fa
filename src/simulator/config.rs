//! The `[simulator]` configuration table and the settings that can change at run time.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::FaultRule;

/// Bearer token accepted when `tokens` is not set. It has the shape of a platform API
/// token (`idt:TKN-XXXX-XXXX:<secret>`), so clients that parse the token id work unchanged.
pub const DEFAULT_TOKEN: &str = "idt:TKN-0000-0000:local-simulator-token";

/// Seed of the generated data set when `seed` is not set.
pub const DEFAULT_SEED: u64 = 42;

/// Address the simulator listens on when `listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// Largest data set the generator builds, in buyers. Ten times the default is plenty for
/// a benchmark, and the cap keeps a typo from allocating gigabytes.
pub const MAX_GENERATED_BUYERS: usize = 1_000_000;

/// Largest number of sellers the generator builds (seller ids have eight digits, but
/// the generator names sellers after countries, so thousands make little sense).
pub const MAX_GENERATED_SELLERS: usize = 9_999;

/// Configuration of the Accounts API simulator, the `[simulator]` table of the main
/// configuration. Every key is optional.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Address and port to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer tokens of the operations account, accepted on every API call.
    pub tokens: Vec<String>,
    /// Bearer tokens of a client account: reads are allowed, operations-only actions
    /// (synchronize, block, unblock, seller status changes) get 403.
    pub client_tokens: Vec<String>,
    /// Seed of the data-set generator and of probabilistic faults and latency.
    pub seed: u64,
    /// Number of buyers to generate.
    pub buyers: usize,
    /// Number of sellers to generate.
    pub sellers: usize,
    /// JSON data set to load instead of generating one (the format of `GET /_sim/export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixture: Option<PathBuf>,
    /// Size of the request log, in entries; the oldest entries are dropped first.
    pub request_log_capacity: usize,
    /// Fault rules active from start-up.
    pub faults: Vec<FaultRule>,

    // The keys below are also in `Behaviour` and can change at run time. They are
    // repeated here because serde cannot flatten a struct and deny unknown fields.
    /// Page size of list calls without `limit`.
    pub default_page_limit: u32,
    /// Largest accepted `limit`; larger values are lowered to it.
    pub max_page_limit: u32,
    /// HTTP status of a business rejection: 400 or 409.
    pub illegal_transition_status: u16,
    /// Response to an action on an object already in the target status.
    pub repeated_action: RepeatedAction,
    /// Response of `POST /buyers/{id}/synchronize`.
    pub synchronize_response: SynchronizeResponse,
    /// Time between a synchronize call and its effect on the links.
    #[serde(with = "humantime_serde")]
    pub synchronize_delay: Duration,
    /// Delay of the simulator's own buyer synchronization after a seller or link change.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub auto_sync: Option<Duration>,
    /// Body of a 401 response.
    pub unauthorized_body: UnauthorizedBody,
    /// Shape of a seller's currencies in responses.
    pub seller_currencies: CurrencyShape,
    /// Extra delay before every API response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Limit on API requests per second; requests over it get 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// The configuration keys that the control API (`PUT /_sim/config`) and
/// [`SimulatorControl::update_behaviour`](super::SimulatorControl::update_behaviour)
/// can change while the simulator runs. Each has the same meaning as in
/// [`SimulatorConfig`].
///
/// Where the platform's documentation is silent, each choice is a key here; the
/// default is the most likely platform behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Page size of list calls without `limit`.
    pub default_page_limit: u32,
    /// Largest accepted `limit`; larger values are lowered to it.
    pub max_page_limit: u32,
    /// HTTP status of a business rejection: 400 or 409.
    pub illegal_transition_status: u16,
    /// Response to an action on an object already in the target status, such as block
    /// on a Blocked link.
    pub repeated_action: RepeatedAction,
    /// Response of `POST /buyers/{id}/synchronize`.
    pub synchronize_response: SynchronizeResponse,
    /// Time between a synchronize call and its effect on the links. Zero applies the
    /// change before the response is sent.
    #[serde(with = "humantime_serde")]
    pub synchronize_delay: Duration,
    /// When set, the simulator synchronizes buyers by itself this long after a seller
    /// status change or an ERP-link block or unblock, as the platform does.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub auto_sync: Option<Duration>,
    /// Body of a 401 response.
    pub unauthorized_body: UnauthorizedBody,
    /// Shape of a seller's currencies in responses.
    pub seller_currencies: CurrencyShape,
    /// Extra delay before every API response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Limit on API requests per second; requests over it get 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Response to an action that would leave the object in the status it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatedAction {
    /// A business rejection with `illegal_transition_status`.
    Reject,
    /// 200 with the unchanged object; `revision` and `audit` stay as they were.
    Noop,
}

/// Response of `POST /buyers/{id}/synchronize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynchronizeResponse {
    /// 200 with the Buyer, as the platform's Python client expects.
    Buyer,
    /// 202 with an empty body, as an API that queues the work responds.
    Accepted,
}

/// Body of a 401 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnauthorizedBody {
    /// Problem Details with title "Unauthorized".
    Problem,
    /// No body at all, as many API gateways respond.
    Empty,
}

/// Shape of a seller's currencies; the platform's own sources disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CurrencyShape {
    /// `currencies: [{"value":"USD","billingEnabled":true,"isDefault":true}]`.
    Objects,
    /// `currencies: ["USD"]`.
    Strings,
    /// `currency: "USD"`, the default currency only.
    Single,
}

/// Distribution of the extra delay added to every API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    /// The same delay every time.
    Fixed {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// A delay drawn uniformly between `min` and `max`.
    Uniform {
        #[serde(with = "humantime_serde")]
        min: Duration,
        #[serde(with = "humantime_serde")]
        max: Duration,
    },
    /// A normal distribution, with negative draws counted as zero.
    Normal {
        #[serde(with = "humantime_serde")]
        mean: Duration,
        #[serde(with = "humantime_serde")]
        std_dev: Duration,
    },
    /// A log-normal distribution with the given mean and standard deviation of the
    /// delay itself (not of its logarithm): a long tail, as real APIs show.
    LogNormal {
        #[serde(with = "humantime_serde")]
        mean: Duration,
        #[serde(with = "humantime_serde")]
        std_dev: Duration,
    },
}

/// Token-bucket limit on API requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate, in requests per second.
    pub per_second: f64,
    /// Requests allowed at once after an idle period; defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// Returns the bucket size: `burst`, or one second's worth of requests (at least 1).
    pub fn capacity(&self) -> f64 {
        match self.burst {
            Some(burst) => f64::from(burst.max(1)),
            None => self.per_second.ceil().max(1.0),
        }
    }
}

/// An invalid configuration value, with the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulator setting `{key}`: {message}")]
pub struct ConfigError {
    /// Key under `[simulator]`, dotted for nested values.
    pub key: String,
    /// The problem and the accepted values.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        let behaviour = Behaviour::default();
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address parses"),
            tokens: vec![DEFAULT_TOKEN.to_owned()],
            client_tokens: Vec::new(),
            seed: DEFAULT_SEED,
            buyers: 10_000,
            sellers: 24,
            fixture: None,
            request_log_capacity: 100_000,
            faults: Vec::new(),
            default_page_limit: behaviour.default_page_limit,
            max_page_limit: behaviour.max_page_limit,
            illegal_transition_status: behaviour.illegal_transition_status,
            repeated_action: behaviour.repeated_action,
            synchronize_response: behaviour.synchronize_response,
            synchronize_delay: behaviour.synchronize_delay,
            auto_sync: behaviour.auto_sync,
            unauthorized_body: behaviour.unauthorized_body,
            seller_currencies: behaviour.seller_currencies,
            latency: behaviour.latency,
            rate_limit: behaviour.rate_limit,
        }
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            default_page_limit: 100,
            max_page_limit: 1000,
            illegal_transition_status: 400,
            repeated_action: RepeatedAction::Reject,
            synchronize_response: SynchronizeResponse::Buyer,
            synchronize_delay: Duration::ZERO,
            auto_sync: None,
            unauthorized_body: UnauthorizedBody::Problem,
            seller_currencies: CurrencyShape::Objects,
            latency: None,
            rate_limit: None,
        }
    }
}

// Tokens are secrets in a shared configuration, so Debug prints only how many there are.
impl fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field(
                "client_tokens",
                &format_args!("[{} redacted]", self.client_tokens.len()),
            )
            .field("seed", &self.seed)
            .field("buyers", &self.buyers)
            .field("sellers", &self.sellers)
            .field("fixture", &self.fixture)
            .field("request_log_capacity", &self.request_log_capacity)
            .field("faults", &self.faults)
            .field("behaviour", &self.behaviour())
            .finish()
    }
}

impl SimulatorConfig {
    /// Checks every key and returns the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tokens.iter().all(|token| token.trim().is_empty()) {
            return Err(ConfigError::new(
                "tokens",
                "no bearer token is set, so every API call would get 401; add at least one",
            ));
        }
        if self.fixture.is_none() {
            if self.buyers > MAX_GENERATED_BUYERS {
                return Err(ConfigError::new(
                    "buyers",
                    format!(
                        "{} is more than the maximum of {MAX_GENERATED_BUYERS}",
                        self.buyers
                    ),
                ));
            }
            if self.sellers == 0 || self.sellers > MAX_GENERATED_SELLERS {
                return Err(ConfigError::new(
                    "sellers",
                    format!("{} is outside 1..={MAX_GENERATED_SELLERS}", self.sellers),
                ));
            }
        }
        for (index, rule) in self.faults.iter().enumerate() {
            rule.validate().map_err(|error| {
                ConfigError::new(format!("faults[{index}].{}", error.key), error.message)
            })?;
        }
        self.behaviour().validate()
    }

    /// Returns the keys that can change at run time.
    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            default_page_limit: self.default_page_limit,
            max_page_limit: self.max_page_limit,
            illegal_transition_status: self.illegal_transition_status,
            repeated_action: self.repeated_action,
            synchronize_response: self.synchronize_response,
            synchronize_delay: self.synchronize_delay,
            auto_sync: self.auto_sync,
            unauthorized_body: self.unauthorized_body,
            seller_currencies: self.seller_currencies,
            latency: self.latency.clone(),
            rate_limit: self.rate_limit.clone(),
        }
    }

    /// Replaces the keys that can change at run time.
    pub fn set_behaviour(&mut self, behaviour: Behaviour) {
        self.default_page_limit = behaviour.default_page_limit;
        self.max_page_limit = behaviour.max_page_limit;
        self.illegal_transition_status = behaviour.illegal_transition_status;
        self.repeated_action = behaviour.repeated_action;
        self.synchronize_response = behaviour.synchronize_response;
        self.synchronize_delay = behaviour.synchronize_delay;
        self.auto_sync = behaviour.auto_sync;
        self.unauthorized_body = behaviour.unauthorized_body;
        self.seller_currencies = behaviour.seller_currencies;
        self.latency = behaviour.latency;
        self.rate_limit = behaviour.rate_limit;
    }
}

impl Behaviour {
    /// Checks every key and returns the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_page_limit == 0 {
            return Err(ConfigError::new("max_page_limit", "must be at least 1"));
        }
        if self.default_page_limit == 0 || self.default_page_limit > self.max_page_limit {
            return Err(ConfigError::new(
                "default_page_limit",
                format!(
                    "{} is outside 1..={} (max_page_limit)",
                    self.default_page_limit, self.max_page_limit
                ),
            ));
        }
        if !matches!(self.illegal_transition_status, 400 | 409) {
            return Err(ConfigError::new(
                "illegal_transition_status",
                format!(
                    "{} is not supported; use 400 or 409",
                    self.illegal_transition_status
                ),
            ));
        }
        if let Some(latency) = &self.latency {
            latency.validate()?;
        }
        if let Some(limit) = &self.rate_limit
            && !(limit.per_second.is_finite() && limit.per_second > 0.0)
        {
            return Err(ConfigError::new(
                "rate_limit.per_second",
                format!(
                    "{} is not a positive number of requests per second",
                    limit.per_second
                ),
            ));
        }
        Ok(())
    }
}

impl Latency {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Latency::Uniform { min, max } = self
            && min > max
        {
            return Err(ConfigError::new(
                "latency.min",
                format!("{min:?} is greater than latency.max ({max:?})"),
            ));
        }
        if let Latency::LogNormal { mean, .. } = self
            && mean.is_zero()
        {
            return Err(ConfigError::new(
                "latency.mean",
                "a log-normal latency needs a mean above zero",
            ));
        }
        Ok(())
    }
}
