//! Logs, traces and metrics.
//!
//! [`Telemetry::install`] sets up all three once per process:
//!
//! - Logs: human-readable lines or JSON on standard error, written by a thread of
//!   their own so a slow terminal or pipe never holds up event processing.
//!   `RUST_LOG` sets the level filter; identical warnings and errors are written once
//!   per `log.repeat_window`.
//! - Traces: the worker's `tracing` spans become OpenTelemetry spans, one per
//!   delivery, per command attempt and per platform request, joined into one trace
//!   through the trace context stored with events and commands ([`context`]). Spans
//!   always get ids, so trace ids reach the audit trail and the platform whether or
//!   not anything is exported.
//! - Metrics ([`metrics`](mod@metrics)) are served in the Prometheus text format at
//!   `/metrics`.
//!
//! Traces and metrics are exported over OTLP/HTTP only when a collector is configured.
//! Exports run on threads of their own with bounded queues and time limits. The last
//! flush at [`Telemetry::shutdown`] has a time limit too. So a collector that is down
//! or never responds can neither slow the worker nor keep it from exiting.

pub mod context;
mod export;
mod filter;
mod logs;
pub mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_semantic_conventions::resource as semconv_resource;
use tracing::{Level, debug, info};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, TelemetryConfig};
use crate::storage::{SettledEvent, trace_id_of};
use export::{ExportPlan, ExportReporter};
use filter::PerCallFilter;
use logs::BoxedLayer;
use metrics::metrics;

/// Filter used when `RUST_LOG` is not set: erp-sync at info, its libraries at warn.
pub const DEFAULT_FILTER: &str =
    "info,sqlx=warn,lapin=warn,hyper=warn,reqwest=warn,opentelemetry=warn";

/// Filter of commands that print their own report, such as the demo, when `RUST_LOG`
/// is not set: only warnings and errors.
pub const QUIET_FILTER: &str = "warn";

/// Time limit of the flush at exit when the latest export failed: the collector is
/// unlikely to recover in the last moments of the process, so the flush is not given
/// the whole `telemetry.shutdown_timeout` to retry a dead connection.
const FAILING_COLLECTOR_FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// Target whose spans become OpenTelemetry spans; `RUST_LOG` does not change it, so
/// trace context never depends on the log level.
const TRACED_TARGET: &str = "erp_sync";

/// Telemetry settings of a command.
#[derive(Debug, Clone, Copy)]
pub struct TelemetrySettings<'a> {
    pub log: &'a LogConfig,
    pub telemetry: &'a TelemetryConfig,
    /// The log filter when `RUST_LOG` is not set.
    pub default_filter: &'a str,
    /// Whether spans and metrics go to a configured collector; the daemon exports,
    /// one-off commands only log.
    pub export: bool,
}

/// The registry behind `/metrics`, set by [`Telemetry::install`].
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();

/// Set by the first [`Telemetry::install`] of the process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The process's telemetry, until [`Telemetry::shutdown`].
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    log_guard: Option<WorkerGuard>,
    reporter: Arc<ExportReporter>,
    shutdown_timeout: Duration,
}

impl Telemetry {
    /// Installs the global log subscriber, the tracer and meter providers, and the
    /// registry behind `/metrics`. Only the first call in a process installs anything
    /// (tests may run several commands in one process); later calls return a handle
    /// that flushes nothing.
    ///
    /// Fails with a [`crate::config::ConfigError`] when a standard `OTEL_*` variable
    /// is invalid.
    pub fn install(settings: TelemetrySettings<'_>) -> anyhow::Result<Telemetry> {
        let reporter = Arc::new(ExportReporter::default());
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Ok(Telemetry {
                tracer_provider: None,
                meter_provider: None,
                log_guard: None,
                reporter,
                shutdown_timeout: Duration::ZERO,
            });
        }

        let env = |name: &str| std::env::var(name).ok();
        let plan = if settings.export {
            ExportPlan::resolve(settings.telemetry, &env)?
        } else {
            ExportPlan::default()
        };
        let resource = resource(settings.telemetry, &env);
        let tracer_provider = export::tracer_provider(resource.clone(), &plan, &reporter)?;
        let registry = prometheus::Registry::new();
        let meter_provider = export::meter_provider(resource, &plan, &reporter, &registry)?;
        let _ = PROMETHEUS.set(registry);
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        // Creates the instruments now, so their series exist from the first scrape.
        metrics();

        let (log_layer, log_guard) = logs::log_layer(
            settings.log.format,
            settings.default_filter,
            settings.log.repeat_window,
        );
        let span_layer = tracing_opentelemetry::layer()
            .with_tracer(tracer_provider.tracer_with_scope(metrics::scope()))
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(PerCallFilter(
                Targets::new().with_target(TRACED_TARGET, Level::INFO),
            ));
        let layers: Vec<BoxedLayer> = vec![log_layer, Box::new(span_layer)];
        // Another subscriber may already be installed in a test process; it stays.
        let _ = tracing_subscriber::registry().with(layers).try_init();

        for (signal, target) in [("traces", &plan.traces), ("metrics", &plan.metrics)] {
            match target {
                Some(target) => info!(signal, url = %target.url, "exporting over OTLP"),
                None => debug!(signal, "no OTLP collector configured; not exporting"),
            }
        }
        Ok(Telemetry {
            tracer_provider: Some(tracer_provider),
            meter_provider: Some(meter_provider),
            log_guard: Some(log_guard),
            reporter,
            shutdown_timeout: settings.telemetry.shutdown_timeout,
        })
    }

    /// Exports every finished span and the current metrics now, waiting for the
    /// collector. Blocks the calling thread; tests call it before they read what a
    /// collector received.
    pub fn force_flush(&self) {
        if let Some(provider) = &self.tracer_provider {
            let _ = provider.force_flush();
        }
        if let Some(provider) = &self.meter_provider {
            let _ = provider.force_flush();
        }
    }

    /// Sends what is still queued, within `telemetry.shutdown_timeout` (or less when
    /// the latest export failed), then flushes the log lines. The providers shut down
    /// on threads of their own, so an export that never returns is abandoned at the
    /// time limit instead of holding the process, whatever the runtime.
    pub fn shutdown(mut self) {
        let limit = if self.reporter.is_failing() {
            self.shutdown_timeout.min(FAILING_COLLECTOR_FLUSH_LIMIT)
        } else {
            self.shutdown_timeout
        };
        let deadline = Instant::now() + limit;
        let (done, finished) = mpsc::channel::<()>();
        let mut waiting = 0;
        if let Some(provider) = self.tracer_provider.take() {
            waiting += usize::from(shut_down_in_background("traces", done.clone(), move || {
                let _ = provider.shutdown_with_timeout(limit);
            }));
        }
        if let Some(provider) = self.meter_provider.take() {
            waiting += usize::from(shut_down_in_background(
                "metrics",
                done.clone(),
                move || {
                    let _ = provider.shutdown_with_timeout(limit);
                },
            ));
        }
        drop(done);

        for _ in 0..waiting {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if finished.recv_timeout(remaining).is_err() {
                self.reporter.flush_timed_out(limit);
                break;
            }
        }
        drop(self.log_guard.take());
    }
}

/// Runs `shutdown` on a thread of its own and reports on `done` when it returns.
/// Returns whether the thread started. Dropping a provider whose thread did not start
/// shuts nothing down, because the global provider and the tracing layer hold clones.
fn shut_down_in_background(
    signal: &'static str,
    done: mpsc::Sender<()>,
    shutdown: impl FnOnce() + Send + 'static,
) -> bool {
    std::thread::Builder::new()
        .name(format!("erp-sync-{signal}-shutdown"))
        .spawn(move || {
            shutdown();
            let _ = done.send(());
        })
        .is_ok()
}

/// The resource of every span and metric: the service's name, version and instance.
/// `OTEL_SERVICE_NAME` takes precedence over `telemetry.service_name`;
/// `OTEL_RESOURCE_ATTRIBUTES` adds attributes.
fn resource(config: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let service_name = env("OTEL_SERVICE_NAME")
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| config.service_name.clone());
    Resource::builder()
        .with_service_name(service_name)
        .with_attributes([
            KeyValue::new(semconv_resource::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
            KeyValue::new(
                semconv_resource::SERVICE_INSTANCE_ID,
                uuid::Uuid::new_v4().to_string(),
            ),
        ])
        .build()
}

/// Renders every metric in the Prometheus text format, or `None` when no telemetry is
/// installed in this process.
pub fn render_metrics() -> Option<String> {
    let registry = PROMETHEUS.get()?;
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .ok()?;
    Some(text)
}

/// Counts events that reached their outcome and writes one line for each.
pub fn report_settled(settled: &[SettledEvent]) {
    for event in settled {
        metrics().event_settled(&event.outcome, event.since_receipt);
        info!(
            event.id = %event.id,
            object.id = event.object_id.as_deref().unwrap_or(""),
            outcome = %event.outcome,
            trace_id = event.traceparent.as_deref().and_then(trace_id_of),
            "event settled"
        );
    }
}
