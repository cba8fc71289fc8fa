//! Export over OTLP/HTTP: where traces and metrics go, the providers that send them,
//! and the reporting of failed exports.
//!
//! Spans are queued by the SDK's batch span processor and metrics are collected by its
//! periodic reader. Both export from threads of their own through reqwest's blocking
//! client, so a collector that is down or never responds holds up neither the Tokio
//! runtime nor event processing. The span queue is bounded (2,048 spans unless
//! `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise); when it is full, new spans are dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing::{debug, info, warn};

use crate::config::{ConfigError, TelemetryConfig, check_otlp_endpoint};

/// Shortest time between two warnings about failed exports.
const WARNING_INTERVAL: Duration = Duration::from_secs(600);

/// The one protocol erp-sync exports with.
const HTTP_PROTOBUF: &str = "http/protobuf";

/// The destination of one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The URL the exporter posts to, for messages.
    pub url: String,
    /// The URL to configure explicitly; `None` when the exporter reads it from the
    /// standard variables itself.
    pub explicit: Option<String>,
}

/// The export settings after the standard `OTEL_*` variables were applied over the
/// `[telemetry]` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ExportPlan {
    pub traces: Option<Target>,
    pub metrics: Option<Target>,
    /// Time limit of one export; `None` when a standard variable sets it.
    pub timeout: Option<Duration>,
    /// Interval of metric exports; `None` when `OTEL_METRIC_EXPORT_INTERVAL` sets it.
    pub metric_interval: Option<Duration>,
}

/// One signal's variables and path, as the OTLP exporter specification names them.
struct Signal {
    name: &'static str,
    path: &'static str,
    endpoint_var: &'static str,
    timeout_var: &'static str,
    protocol_var: &'static str,
    exporter_var: &'static str,
}

const TRACES: Signal = Signal {
    name: "traces",
    path: "/v1/traces",
    endpoint_var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    timeout_var: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    protocol_var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    exporter_var: "OTEL_TRACES_EXPORTER",
};

const METRICS: Signal = Signal {
    name: "metrics",
    path: "/v1/metrics",
    endpoint_var: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    timeout_var: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    protocol_var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    exporter_var: "OTEL_METRICS_EXPORTER",
};

impl ExportPlan {
    /// Decides which signals to export and where. `env` reads a variable, and an empty
    /// value counts as unset, as the OpenTelemetry specification requires.
    pub fn resolve(
        config: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ExportPlan, ConfigError> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(ExportPlan::default());
        }

        let traces = resolve_target(&TRACES, config, &env)?;
        let metrics = resolve_target(&METRICS, config, &env)?;
        let timeout_set = [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            TRACES.timeout_var,
            METRICS.timeout_var,
        ]
        .iter()
        .any(|name| env(name).is_some());
        Ok(ExportPlan {
            traces,
            metrics,
            timeout: (!timeout_set).then_some(config.export_timeout),
            metric_interval: env("OTEL_METRIC_EXPORT_INTERVAL")
                .is_none()
                .then_some(config.metric_interval),
        })
    }
}

fn resolve_target(
    signal: &Signal,
    config: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Target>, ConfigError> {
    if env(signal.exporter_var).is_some_and(|value| value.trim().eq_ignore_ascii_case("none")) {
        return Ok(None);
    }
    for variable in ["OTEL_EXPORTER_OTLP_PROTOCOL", signal.protocol_var] {
        if let Some(protocol) = env(variable)
            && protocol.trim() != HTTP_PROTOBUF
        {
            return Err(ConfigError::Env {
                var: variable.to_owned(),
                shown_value: format!("{protocol:?}"),
                expected: format!("{HTTP_PROTOBUF:?}, the only protocol erp-sync exports with"),
            });
        }
    }

    let checked = |variable: &str, value: String| {
        check_otlp_endpoint(value.trim()).map_err(|problem| ConfigError::Env {
            var: variable.to_owned(),
            shown_value: format!("{value:?}"),
            expected: format!("an OTLP/HTTP URL ({problem})"),
        })?;
        Ok::<String, ConfigError>(value.trim().to_owned())
    };
    if let Some(url) = env(signal.endpoint_var) {
        // The signal's own variable is the whole URL, used as it is.
        let url = checked(signal.endpoint_var, url)?;
        return Ok(Some(Target {
            url,
            explicit: None,
        }));
    }
    if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let base = checked("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
        return Ok(Some(Target {
            url: signal_url(&base, signal.path),
            explicit: None,
        }));
    }
    let base = config.otlp_endpoint.trim();
    if base.is_empty() {
        return Ok(None);
    }
    let url = signal_url(base, signal.path);
    Ok(Some(Target {
        url: url.clone(),
        explicit: Some(url),
    }))
}

/// Appends a signal's path to a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is used.
fn signal_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Builds the tracer provider: batch export over OTLP when the plan has a target,
/// otherwise spans that get ids and a context but go nowhere.
pub(super) fn tracer_provider(
    resource: Resource,
    plan: &ExportPlan,
    reporter: &Arc<ExportReporter>,
) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(target) = &plan.traces {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(url) = &target.explicit {
            exporter = exporter.with_endpoint(url);
        }
        if let Some(timeout) = plan.timeout {
            exporter = exporter.with_timeout(timeout);
        }
        let exporter = ReportingExporter {
            inner: exporter.build()?,
            reporter: reporter.clone(),
            signal: TRACES.name,
            url: target.url.clone(),
        };
        builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
    }
    Ok(builder.build())
}

/// Builds the meter provider: always read by the Prometheus registry behind
/// `/metrics`, and exported over OTLP periodically when the plan has a target.
pub(super) fn meter_provider(
    resource: Resource,
    plan: &ExportPlan,
    reporter: &Arc<ExportReporter>,
    registry: &prometheus::Registry,
) -> anyhow::Result<SdkMeterProvider> {
    let scrape = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    let mut builder = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(scrape);
    if let Some(target) = &plan.metrics {
        let mut exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_temporality(Temporality::Cumulative);
        if let Some(url) = &target.explicit {
            exporter = exporter.with_endpoint(url);
        }
        if let Some(timeout) = plan.timeout {
            exporter = exporter.with_timeout(timeout);
        }
        let exporter = ReportingExporter {
            inner: exporter.build()?,
            reporter: reporter.clone(),
            signal: METRICS.name,
            url: target.url.clone(),
        };
        let mut reader = PeriodicReader::builder(exporter);
        if let Some(interval) = plan.metric_interval {
            reader = reader.with_interval(interval);
        }
        builder = builder.with_reader(reader.build());
    }
    Ok(builder.build())
}

/// Turns failed exports into at most one warning per outage of the collector, and
/// at most one per [`WARNING_INTERVAL`], so a collector that is down for days writes
/// one line instead of one per batch.
#[derive(Debug, Default)]
pub(crate) struct ExportReporter {
    state: Mutex<ReporterState>,
}

#[derive(Debug, Default)]
struct ReporterState {
    failing: bool,
    failed_exports: u64,
    last_warning: Option<Instant>,
}

impl ReporterState {
    fn may_warn(&mut self) -> bool {
        let now = Instant::now();
        let allowed = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
        if allowed {
            self.last_warning = Some(now);
        }
        allowed
    }
}

impl ExportReporter {
    /// Records the result of one export of `signal` to `url`.
    fn exported(&self, signal: &'static str, url: &str, result: &OTelSdkResult) {
        let mut state = self.state.lock().expect("export reporter lock");
        match result {
            Ok(()) => {
                if !state.failing {
                    return;
                }
                state.failing = false;
                let failed_exports = std::mem::take(&mut state.failed_exports);
                drop(state);
                info!(
                    signal,
                    url, failed_exports, "the OTLP collector accepts telemetry again"
                );
            }
            Err(error) => {
                state.failed_exports += 1;
                if state.failing {
                    return;
                }
                state.failing = true;
                let warn_now = state.may_warn();
                drop(state);
                if warn_now {
                    warn!(
                        signal,
                        url,
                        %error,
                        "cannot export telemetry to the OTLP collector; it is dropped while the collector fails, and further failures are not logged"
                    );
                } else {
                    debug!(signal, url, %error, "OTLP export failed");
                }
            }
        }
    }

    /// Reports whether the latest export failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.state.lock().expect("export reporter lock").failing
    }

    /// Reports that the flush at exit did not finish within `limit`.
    pub(crate) fn flush_timed_out(&self, limit: Duration) {
        let warn_now = self.state.lock().expect("export reporter lock").may_warn();
        let limit_ms = limit.as_millis() as u64;
        if warn_now {
            warn!(
                limit_ms,
                "telemetry not exported before the shutdown time limit; the rest is dropped"
            );
        } else {
            info!(
                limit_ms,
                "telemetry not exported before the shutdown time limit; the rest is dropped"
            );
        }
    }
}

/// An OTLP exporter whose results go to the [`ExportReporter`].
#[derive(Debug)]
struct ReportingExporter<E> {
    inner: E,
    reporter: Arc<ExportReporter>,
    signal: &'static str,
    url: String,
}

impl<E: SpanExporter> SpanExporter for ReportingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.reporter.exported(self.signal, &self.url, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for ReportingExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.reporter.exported(self.signal, &self.url, &result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn plan(config_endpoint: &str, vars: &[(&str, &str)]) -> Result<ExportPlan, ConfigError> {
        let mut config = Config::defaults().telemetry;
        config.otlp_endpoint = config_endpoint.to_owned();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let env = move |name: &str| {
            vars.iter()
                .find(|(known, _)| known == name)
                .map(|(_, value)| value.clone())
        };
        ExportPlan::resolve(&config, &env)
    }

    #[test]
    fn nothing_is_exported_by_default() {
        assert_eq!(
            plan("", &[]).unwrap(),
            ExportPlan {
                timeout: Some(Duration::from_secs(5)),
                metric_interval: Some(Duration::from_secs(30)),
                ..ExportPlan::default()
            }
        );
    }

    #[test]
    fn config_endpoint_gets_signal_paths() {
        let plan = plan("http://127.0.0.1:4318/", &[]).unwrap();
        let traces = plan.traces.unwrap();
        assert_eq!(traces.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            traces.explicit.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            plan.metrics.unwrap().url,
            "http://127.0.0.1:4318/v1/metrics"
        );
    }

    #[test]
    fn standard_variables_take_precedence() {
        let plan = plan(
            "http://127.0.0.1:4318",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:14318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://127.0.0.1:24318/traces",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ],
        )
        .unwrap();
        let traces = plan.traces.unwrap();
        assert_eq!(traces.url, "http://127.0.0.1:24318/traces");
        assert_eq!(
            traces.explicit, None,
            "the exporter reads the variable itself"
        );
        assert_eq!(
            plan.metrics.unwrap().url,
            "http://127.0.0.1:14318/v1/metrics"
        );
        assert_eq!(plan.timeout, None);
        assert_eq!(plan.metric_interval, None);
    }

    #[test]
    fn signals_can_be_turned_off() {
        let plan = plan("http://127.0.0.1:4318", &[("OTEL_TRACES_EXPORTER", "none")]).unwrap();
        assert_eq!(plan.traces, None);
        assert!(plan.metrics.is_some());

        let disabled =
            super::tests::plan("http://127.0.0.1:4318", &[("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(disabled.unwrap(), ExportPlan::default());
    }

    #[test]
    fn grpc_protocol_is_rejected_with_the_variable() {
        let error = plan(
            "http://127.0.0.1:4318",
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{error}");
        assert!(error.contains("http/protobuf"), "{error}");
    }

    #[test]
    fn invalid_endpoint_variable_is_named() {
        let error = plan("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{error}");
    }
}
