//! Typed configuration: built-in defaults (`config/default.toml`), an optional file,
//! then `ERP_SYNC_*` environment variables, validated once at start-up.

mod layers;
mod secret;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

pub use layers::{DEFAULT_TOML, ENV_PREFIX, Origin, env_var_name, overridable_keys};
pub use secret::{Secret, redact_url};

use crate::simulator::SimulatorConfig;

/// Environment variable naming an optional configuration file.
pub const CONFIG_FILE_VAR: &str = "ERP_SYNC_CONFIG";

/// The whole configuration of erp-sync.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub database: DatabaseConfig,
    pub ingest: IngestConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryConfig,
    pub platform: PlatformConfig,
    #[serde(default)]
    pub simulator: SimulatorConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}

/// Broker connection and topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: Secret,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    pub exchange: String,
    pub queue: String,
    pub binding_key: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub prefetch: u16,
    pub max_message_bytes: usize,
    pub connection_name: String,
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_unavailable: Duration,
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

/// PostgreSQL connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

/// Batching of deliveries into database transactions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
}

/// Execution of commands against the platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    pub enabled: bool,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub auth_pause: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub coalesce_window: Duration,
}

/// Retry schedule of failed platform calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    pub factor: f64,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

/// The Marketplace Platform's API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    pub url: String,
    pub token: Secret,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub page_limit: u32,
    pub max_rate: f64,
    #[serde(with = "humantime_serde")]
    pub max_pause: Duration,
}

/// Format of the log lines.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Identical warnings and errors within this time are written once.
    #[serde(with = "humantime_serde")]
    pub repeat_window: Duration,
}

/// Traces, metrics, and the listener for probes and scraping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the health and metrics listener; empty when it is off.
    pub listen: String,
    /// Base URL of an OTLP/HTTP receiver; empty when nothing is exported.
    pub otlp_endpoint: String,
    pub service_name: String,
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub metric_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl TelemetryConfig {
    /// Returns the listener's address, or `None` when the listener is off. Validation
    /// has checked that a non-empty value parses.
    pub fn listen_address(&self) -> Option<std::net::SocketAddr> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return None;
        }
        listen.parse().ok()
    }
}

/// A configuration that cannot be used, with the key, its source and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid value {shown_value} in {var}: expected {expected}")]
    Env {
        /// The variable, followed by the configuration key it sets when it sets one.
        var: String,
        shown_value: String,
        expected: String,
    },
    #[error("invalid configuration key `{key}` (set by {origin}): {message}")]
    Key {
        key: String,
        origin: Origin,
        message: String,
    },
}

/// Returns the first line of a parser's message about a value, with the fix for a
/// duration written without its unit.
fn value_error_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    if first.ends_with("expected a duration") {
        format!("{first}; write it with a unit, such as 500ms, 30s or 5m")
    } else {
        first.to_owned()
    }
}

impl Config {
    /// Loads the configuration from the defaults, `file` (or the file named by
    /// `ERP_SYNC_CONFIG`) and the process environment, and validates it.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from));
        let env = |name: &str| std::env::var(name).ok();
        Self::load_from(file.as_deref(), &env)
    }

    /// Loads the configuration with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| ConfigError::File {
                        path: path.display().to_string(),
                        message: error.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let layered = layers::merge(file.zip(text.as_deref()), env)?;

        let deserializer = toml::Value::Table(layered.tree.clone());
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let key = error.path().to_string();
                ConfigError::Key {
                    origin: layered.origin_of(&key),
                    message: value_error_message(&error.into_inner().to_string()),
                    key,
                }
            })?;

        config.validate(&layered)?;
        Ok(config)
    }

    /// The built-in defaults alone, as tests and the demo start from them.
    pub fn defaults() -> Config {
        Self::load_from(None, &|_| None).expect("the built-in defaults are valid")
    }

    fn validate(&mut self, layered: &layers::Layered) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| ConfigError::Key {
            key: key.to_owned(),
            origin: layered.origin_of(key),
            message,
        };

        let amqp_url = Url::parse(self.amqp.url.expose()).map_err(|error| {
            fail(
                "amqp.url",
                format!("not a URL ({error}); expected amqp://user:password@host:5672/vhost"),
            )
        })?;
        if !matches!(amqp_url.scheme(), "amqp" | "amqps") {
            return Err(fail(
                "amqp.url",
                format!(
                    "scheme {:?} is not supported; expected amqp or amqps",
                    amqp_url.scheme()
                ),
            ));
        }
        for (key, name) in [
            ("amqp.exchange", &self.amqp.exchange),
            ("amqp.queue", &self.amqp.queue),
            ("amqp.dead_letter_exchange", &self.amqp.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.amqp.dead_letter_queue),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(fail(key, "expected a name of 1 to 255 bytes".into()));
            }
        }
        if self.amqp.prefetch == 0 {
            return Err(fail(
                "amqp.prefetch",
                "must be at least 1; 0 would mean no limit".into(),
            ));
        }
        if self.amqp.max_message_bytes < 1024 {
            return Err(fail(
                "amqp.max_message_bytes",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.amqp.heartbeat.as_secs() == 0 || self.amqp.heartbeat.as_secs() > u16::MAX as u64 {
            return Err(fail(
                "amqp.heartbeat",
                "expected a whole number of seconds from 1s to 65535s".into(),
            ));
        }
        if self.amqp.reconnect_min_delay > self.amqp.reconnect_max_delay {
            return Err(fail(
                "amqp.reconnect_min_delay",
                "must not exceed amqp.reconnect_max_delay".into(),
            ));
        }

        let database_url = Url::parse(self.database.url.expose()).map_err(|error| {
            fail(
                "database.url",
                format!("not a URL ({error}); expected postgres://user@host:5432/database"),
            )
        })?;
        if !matches!(database_url.scheme(), "postgres" | "postgresql") {
            return Err(fail(
                "database.url",
                format!(
                    "scheme {:?} is not supported; expected postgres",
                    database_url.scheme()
                ),
            ));
        }
        if self.database.pool_size < 2 {
            return Err(fail(
                "database.pool_size",
                "must be at least 2: ingest and dispatch each need a connection".into(),
            ));
        }

        if self.ingest.batch_size == 0 {
            return Err(fail("ingest.batch_size", "must be at least 1".into()));
        }
        if self.dispatch.concurrency == 0 {
            return Err(fail("dispatch.concurrency", "must be at least 1".into()));
        }
        if self.dispatch.lease < Duration::from_secs(3) {
            return Err(fail(
                "dispatch.lease",
                "must be at least 3s, because a worker renews its leases every third of it".into(),
            ));
        }
        if self.dispatch.poll_interval.is_zero() {
            return Err(fail(
                "dispatch.poll_interval",
                "must be longer than zero".into(),
            ));
        }

        if self.retry.max_attempts == 0 {
            return Err(fail(
                "retry.max_attempts",
                "must be at least 1 (the first attempt counts)".into(),
            ));
        }
        if !(self.retry.factor >= 1.0 && self.retry.factor.is_finite()) {
            return Err(fail(
                "retry.factor",
                "must be a number of at least 1.0".into(),
            ));
        }
        if self.retry.initial_delay > self.retry.max_delay {
            return Err(fail(
                "retry.initial_delay",
                "must not exceed retry.max_delay".into(),
            ));
        }

        self.platform.url = normalize_platform_url(&self.platform.url)
            .map_err(|message| fail("platform.url", message))?;
        if self.platform.token.expose().trim().is_empty() {
            return Err(fail(
                "platform.token",
                "must not be empty; set ERP_SYNC_PLATFORM_TOKEN".into(),
            ));
        }
        if self.platform.timeout.is_zero() || self.platform.connect_timeout.is_zero() {
            return Err(fail(
                "platform.timeout",
                "timeouts must be longer than zero".into(),
            ));
        }
        if !(self.platform.max_rate >= 0.0 && self.platform.max_rate.is_finite()) {
            return Err(fail(
                "platform.max_rate",
                "must be a number of calls per second, 0 for no limit".into(),
            ));
        }
        if !(1..=1000).contains(&self.platform.page_limit) {
            return Err(fail(
                "platform.page_limit",
                "must be between 1 and 1000".into(),
            ));
        }

        self.validate_telemetry(&fail)
    }

    fn validate_telemetry(
        &self,
        fail: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let telemetry = &self.telemetry;
        let listen = telemetry.listen.trim();
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(fail(
                "telemetry.listen",
                format!(
                    "{listen:?} is not an address; expected an IP address and a port such as 127.0.0.1:9464, or \"\" to turn the listener off"
                ),
            ));
        }
        let endpoint = telemetry.otlp_endpoint.trim();
        if !endpoint.is_empty() {
            check_otlp_endpoint(endpoint)
                .map_err(|message| fail("telemetry.otlp_endpoint", message))?;
        }
        if telemetry.service_name.trim().is_empty() {
            return Err(fail("telemetry.service_name", "must not be empty".into()));
        }
        for (key, value) in [
            ("telemetry.export_timeout", telemetry.export_timeout),
            ("telemetry.metric_interval", telemetry.metric_interval),
            ("telemetry.gauge_interval", telemetry.gauge_interval),
        ] {
            if value.is_zero() {
                return Err(fail(key, "must be longer than zero".into()));
            }
        }
        Ok(())
    }
}

/// Checks that an OTLP/HTTP endpoint is an http or https URL with a host.
pub fn check_otlp_endpoint(text: &str) -> Result<(), String> {
    let url = Url::parse(text).map_err(|error| {
        format!("{text:?} is not a URL ({error}); expected the collector's base URL such as http://127.0.0.1:4318")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; OTLP is exported over http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(())
}

/// Reduces a platform address to its origin: `https://host[:port]`, accepting and
/// removing a trailing `/public` or `/public/v1`.
pub fn normalize_platform_url(text: &str) -> Result<String, String> {
    let url = Url::parse(text.trim()).map_err(|error| {
        format!(
            "not a URL ({error}); expected an origin such as https://api.platform.softwareone.com"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; expected https (or http for a local simulator)",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("expected an origin without a query or fragment".into());
    }

    let path = url.path().trim_end_matches('/');
    let remainder = path
        .strip_suffix("/public/v1")
        .or_else(|| path.strip_suffix("/public"))
        .unwrap_or(path);
    if !remainder.is_empty() {
        return Err(format!(
            "unexpected path {:?}; expected the origin alone, optionally followed by /public or /public/v1",
            url.path()
        ));
    }

    let mut origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        origin.push_str(&format!(":{port}"));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Config::load_from(None, &env)
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::defaults();
        assert_eq!(config.amqp.exchange, "accounts.events");
        assert_eq!(config.platform.url, "http://127.0.0.1:8089");
        assert_eq!(
            config.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/erp_sync"
        );
    }

    #[test]
    fn platform_url_suffixes_are_stripped() {
        for input in [
            "https://api.example.test",
            "https://api.example.test/",
            "https://api.example.test/public",
            "https://api.example.test/public/v1",
            "https://api.example.test/public/v1/",
        ] {
            assert_eq!(
                normalize_platform_url(input).unwrap(),
                "https://api.example.test",
                "{input}"
            );
        }
        assert_eq!(
            normalize_platform_url("http://127.0.0.1:8089/public").unwrap(),
            "http://127.0.0.1:8089"
        );
    }

    #[test]
    fn platform_url_with_other_path_is_rejected() {
        let error = normalize_platform_url("https://api.example.test/public/v2").unwrap_err();
        assert!(error.contains("/public/v2"), "{error}");
    }

    #[test]
    fn env_overrides_named_variables() {
        let config = load_with(&[
            ("ERP_SYNC_AMQP_URL", "amqp://u:p@127.0.0.1:5673/%2f"),
            (
                "ERP_SYNC_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/other",
            ),
            (
                "ERP_SYNC_PLATFORM_URL",
                "https://api.example.test/public/v1",
            ),
            ("ERP_SYNC_PLATFORM_TOKEN", "idt:TKN-1111-2222:abc"),
            ("ERP_SYNC_DISPATCH_CONCURRENCY", "3"),
            ("ERP_SYNC_RETRY_INITIAL_DELAY", "250ms"),
        ])
        .unwrap();
        assert_eq!(config.amqp.url.expose(), "amqp://u:p@127.0.0.1:5673/%2f");
        assert_eq!(
            config.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/other"
        );
        assert_eq!(config.platform.url, "https://api.example.test");
        assert_eq!(config.platform.token.expose(), "idt:TKN-1111-2222:abc");
        assert_eq!(config.dispatch.concurrency, 3);
        assert_eq!(config.retry.initial_delay, Duration::from_millis(250));
    }

    #[test]
    fn invalid_value_names_key_and_origin() {
        let error = load_with(&[("ERP_SYNC_DISPATCH_LEASE", "soon")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("dispatch.lease"), "{error}");
        assert!(error.contains("ERP_SYNC_DISPATCH_LEASE"), "{error}");
    }

    #[test]
    fn duration_without_unit_names_fix() {
        let error = load_with(&[("ERP_SYNC_DISPATCH_LEASE", "5")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("dispatch.lease"), "{error}");
        assert!(error.contains("with a unit"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn unparsable_variable_names_its_key() {
        let error = load_with(&[("ERP_SYNC_INGEST_BATCH_SIZE", "abc")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("ERP_SYNC_INGEST_BATCH_SIZE"), "{error}");
        assert!(error.contains("ingest.batch_size"), "{error}");
    }

    #[test]
    fn semantic_error_names_key_and_fix() {
        let error = load_with(&[("ERP_SYNC_AMQP_PREFETCH", "0")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("amqp.prefetch"), "{error}");
        assert!(error.contains("at least 1"), "{error}");
    }

    #[test]
    fn token_is_hidden_from_debug_output() {
        let config =
            load_with(&[("ERP_SYNC_PLATFORM_TOKEN", "idt:TKN-1111-2222:very-secret")]).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(
            !debug.contains("guest:guest"),
            "the broker password leaked: {debug}"
        );
    }

    #[test]
    fn readme_lists_every_variable() {
        let readme = include_str!("../../README.md");
        for (key, variable) in overridable_keys() {
            let row = format!("| `{key}` | `{variable}` |");
            assert!(
                readme.contains(&row),
                "README.md has no configuration row for {key}"
            );
        }
    }

    #[test]
    fn telemetry_is_off_by_default_except_the_listener() {
        let config = Config::defaults();
        assert_eq!(config.telemetry.otlp_endpoint, "");
        assert_eq!(
            config.telemetry.listen_address(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn empty_listen_turns_the_listener_off() {
        let config = load_with(&[("ERP_SYNC_TELEMETRY_LISTEN", "")]).unwrap();
        assert_eq!(config.telemetry.listen_address(), None);
    }

    #[test]
    fn invalid_telemetry_settings_name_the_key() {
        for (variable, value, key) in [
            ("ERP_SYNC_TELEMETRY_LISTEN", "localhost", "telemetry.listen"),
            (
                "ERP_SYNC_TELEMETRY_OTLP_ENDPOINT",
                "grpc://127.0.0.1:4317",
                "telemetry.otlp_endpoint",
            ),
            (
                "ERP_SYNC_TELEMETRY_OTLP_ENDPOINT",
                "127.0.0.1:4318",
                "telemetry.otlp_endpoint",
            ),
            (
                "ERP_SYNC_TELEMETRY_GAUGE_INTERVAL",
                "0s",
                "telemetry.gauge_interval",
            ),
        ] {
            let error = load_with(&[(variable, value)]).unwrap_err().to_string();
            assert!(error.contains(key), "{variable}={value}: {error}");
        }
    }

    #[test]
    fn unknown_key_in_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("erp-sync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[amqp]\nprefech = 5\n").unwrap();
        let error = Config::load_from(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("prefech"), "{error}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
