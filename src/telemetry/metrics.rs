//! The worker's metrics. Names follow the OpenTelemetry semantic conventions (schema
//! 1.42.0) where they define one; the others start with `erp_sync.`.
//!
//! Counters and histograms are recorded in process as work happens. Gauges are read
//! when metrics are collected, by a scrape of `/metrics` or a periodic OTLP export.
//! The connection states come from the worker's readiness flags and pool. The open
//! work comes from a snapshot that the worker refreshes every
//! `telemetry.gauge_interval` with one cheap query, never per event.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{InstrumentationScope, KeyValue, global};
use opentelemetry_semantic_conventions::attribute as semconv;
use opentelemetry_semantic_conventions::metric as semconv_metric;

use crate::health::Readiness;
use crate::storage::{Database, OpenWork};

/// Attribute names of erp-sync's own metrics.
pub mod attribute {
    /// The outcome of a delivery: `applied`, `ignored`, `duplicate`, `superseded`,
    /// `parked` or `dead_lettered`.
    pub const OUTCOME: &str = "erp_sync.outcome";
    /// The kind of a command: `synchronize_buyer`, `set_erp_link_status`, ….
    pub const COMMAND_KIND: &str = "erp_sync.command.kind";
    /// The result of an attempt: `applied`, `retry`, `parked`, `deferred` or `continue`.
    pub const ATTEMPT_RESULT: &str = "erp_sync.attempt.result";
    /// An open state of a command: `pending`, `running` or `parked`.
    pub const COMMAND_STATE: &str = "erp_sync.command.state";
    /// The park reason of a parked command.
    pub const PARK_REASON: &str = "erp_sync.park_reason";
    /// The reason a message was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "erp_sync.dead_letter.reason";
}

/// Name of erp-sync's instrumentation scope, on every metric and span.
pub const SCOPE_NAME: &str = "erp-sync";

/// Name of the database connection pool in `db.client.connection.*`.
pub const POOL_NAME: &str = "erp-sync";

/// Bucket boundaries of the short durations, in seconds: those the HTTP semantic
/// conventions advise for `http.client.request.duration`.
const SHORT_DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket boundaries of the time from an event's receipt to its outcome, in seconds:
/// retries stretch it from milliseconds to hours.
const SETTLE_DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Builds the instrumentation scope of erp-sync's spans and metrics.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Returns the process's instruments, creating them on first use from the global meter
/// provider. [`super::Telemetry::install`] sets that provider first. Without it, as in
/// tests that install no telemetry, every instrument records nothing.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&global::meter_with_scope(scope())))
}

/// Every instrument of the worker.
pub struct Metrics {
    consumed_messages: Counter<u64>,
    process_duration: Histogram<f64>,
    deliveries_settled: Counter<u64>,
    settle_duration: Histogram<f64>,
    dead_letters: Counter<u64>,
    request_duration: Histogram<f64>,
    attempts: Counter<u64>,
    retries: Counter<u64>,
    observed: Arc<Observed>,
}

/// Labels of a delivery in the messaging metrics.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryLabels<'a> {
    /// The exchange the message was published to.
    pub destination: &'a str,
    /// The dead-letter reason when the message could not become an event.
    pub error_type: Option<&'a str>,
}

/// One request to the platform, for `http.client.request.duration`.
#[derive(Debug, Clone, Copy)]
pub struct PlatformCall<'a> {
    pub method: &'a str,
    /// The path with ids replaced by placeholders, such as
    /// `/public/v1/accounts/buyers/{id}/synchronize`.
    pub url_template: &'a str,
    pub server_address: &'a str,
    pub server_port: u16,
    pub status: Option<u16>,
    /// The status code as text for 4xx and 5xx, or `timeout` or `connection` when no
    /// response came.
    pub error_type: Option<&'a str>,
    pub duration: Duration,
}

impl Metrics {
    fn new(meter: &Meter) -> Metrics {
        let observed = Arc::new(Observed::default());
        register_gauges(meter, &observed);
        let metrics = Metrics {
            consumed_messages: meter
                .u64_counter(semconv_metric::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Messages delivered to erp-sync by RabbitMQ, redeliveries included.")
                .build(),
            process_duration: meter
                .f64_histogram(semconv_metric::MESSAGING_PROCESS_DURATION)
                .with_unit("s")
                .with_description(
                    "Time from a delivery's arrival to its acknowledgement: validation, planning and the transaction that stores it.",
                )
                .with_boundaries(SHORT_DURATION_BOUNDARIES.to_vec())
                .build(),
            deliveries_settled: meter
                .u64_counter("erp_sync.deliveries.settled")
                .with_unit("{delivery}")
                .with_description(
                    "Deliveries that reached their outcome: applied, ignored, duplicate, superseded, parked or dead_lettered.",
                )
                .build(),
            settle_duration: meter
                .f64_histogram("erp_sync.event.settle.duration")
                .with_unit("s")
                .with_description(
                    "Time from an event's receipt to its outcome, retries included, for events that needed platform calls.",
                )
                .with_boundaries(SETTLE_DURATION_BOUNDARIES.to_vec())
                .build(),
            dead_letters: meter
                .u64_counter("erp_sync.dead_letters")
                .with_unit("{message}")
                .with_description("Messages published to the dead-letter exchange, by reason.")
                .build(),
            request_duration: meter
                .f64_histogram(semconv_metric::HTTP_CLIENT_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Duration of requests to the platform's Accounts API.")
                .with_boundaries(SHORT_DURATION_BOUNDARIES.to_vec())
                .build(),
            attempts: meter
                .u64_counter("erp_sync.command.attempts")
                .with_unit("{attempt}")
                .with_description("Finished attempts of commands, by kind and result.")
                .build(),
            retries: meter
                .u64_counter("erp_sync.command.retries")
                .with_unit("{attempt}")
                .with_description(
                    "Attempts that failed in a way that may pass and were scheduled again, by kind and failure.",
                )
                .build(),
            observed,
        };
        metrics.start_outcome_series();
        metrics
    }

    /// Starts every outcome's series at zero, so that rates are defined before the
    /// first delivery of each outcome.
    fn start_outcome_series(&self) {
        for outcome in [
            "applied",
            "ignored",
            "duplicate",
            "superseded",
            "parked",
            "dead_lettered",
        ] {
            self.deliveries_settled
                .add(0, &[KeyValue::new(attribute::OUTCOME, outcome)]);
        }
    }

    /// Counts a delivery taken from the work queue.
    pub fn delivery_received(&self, labels: DeliveryLabels<'_>) {
        self.consumed_messages.add(1, &messaging_attributes(labels));
    }

    /// Records how long a delivery took until it was acknowledged.
    pub fn delivery_processed(&self, labels: DeliveryLabels<'_>, duration: Duration) {
        self.process_duration
            .record(duration.as_secs_f64(), &messaging_attributes(labels));
    }

    /// Counts a delivery that reached its outcome.
    pub fn delivery_settled(&self, outcome: &str) {
        self.deliveries_settled
            .add(1, &[KeyValue::new(attribute::OUTCOME, outcome.to_owned())]);
    }

    /// Counts an event whose commands all finished, with the time since its receipt.
    pub fn event_settled(&self, outcome: &str, since_receipt: Option<Duration>) {
        self.delivery_settled(outcome);
        if let Some(duration) = since_receipt {
            self.settle_duration.record(
                duration.as_secs_f64(),
                &[KeyValue::new(attribute::OUTCOME, outcome.to_owned())],
            );
        }
    }

    /// Counts a message published to the dead-letter exchange.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_letters.add(
            1,
            &[KeyValue::new(
                attribute::DEAD_LETTER_REASON,
                reason.to_owned(),
            )],
        );
    }

    /// Records one request to the platform.
    pub fn platform_call(&self, call: PlatformCall<'_>) {
        let mut attributes = vec![
            KeyValue::new(semconv::HTTP_REQUEST_METHOD, call.method.to_owned()),
            KeyValue::new(semconv::URL_TEMPLATE, call.url_template.to_owned()),
            KeyValue::new(semconv::SERVER_ADDRESS, call.server_address.to_owned()),
            KeyValue::new(semconv::SERVER_PORT, i64::from(call.server_port)),
        ];
        if let Some(status) = call.status {
            attributes.push(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status),
            ));
        }
        if let Some(error_type) = call.error_type {
            attributes.push(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
        }
        self.request_duration
            .record(call.duration.as_secs_f64(), &attributes);
    }

    /// Counts a finished attempt; a `retry` also counts as a retry caused by
    /// `error_type`.
    pub fn attempt_finished(&self, kind: &str, result: &str, error_type: Option<&str>) {
        let kind = KeyValue::new(attribute::COMMAND_KIND, kind.to_owned());
        self.attempts.add(
            1,
            &[
                kind.clone(),
                KeyValue::new(attribute::ATTEMPT_RESULT, result.to_owned()),
            ],
        );
        if result == "retry" {
            let error_type = error_type.unwrap_or("_OTHER").to_owned();
            self.retries
                .add(1, &[kind, KeyValue::new(semconv::ERROR_TYPE, error_type)]);
        }
    }

    /// Makes the gauges report this worker: its readiness flags, its connection pool
    /// and the open work it refreshes. A later call replaces the worker observed.
    pub fn observe_worker(&self, worker: ObservedWorker) {
        *self.observed.worker.lock().expect("observed worker lock") = Some(worker);
    }
}

fn messaging_attributes(labels: DeliveryLabels<'_>) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new(semconv::MESSAGING_SYSTEM, "rabbitmq"),
        KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
        KeyValue::new(
            semconv::MESSAGING_DESTINATION_NAME,
            labels.destination.to_owned(),
        ),
    ];
    if let Some(error_type) = labels.error_type {
        attributes.push(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
    }
    attributes
}

/// The worker the gauges report.
pub struct ObservedWorker {
    pub readiness: Arc<Readiness>,
    pub database: Database,
    pub open_work: Arc<OpenWorkSnapshot>,
}

/// The latest counts of open work, with the time they were taken.
#[derive(Debug)]
pub struct OpenWorkSnapshot {
    latest: Mutex<Option<(Instant, OpenWork)>>,
    /// Counts older than this are not reported, so a database that stopped responding
    /// shows as missing data instead of as counts that look current.
    max_age: Duration,
}

impl OpenWorkSnapshot {
    /// Creates an empty snapshot whose counts are reported for `max_age` after each
    /// refresh.
    pub fn new(max_age: Duration) -> OpenWorkSnapshot {
        OpenWorkSnapshot {
            latest: Mutex::new(None),
            max_age,
        }
    }

    /// Stores counts taken now.
    pub fn update(&self, work: OpenWork) {
        *self.latest.lock().expect("open work lock") = Some((Instant::now(), work));
    }

    fn fresh(&self) -> Option<OpenWork> {
        let latest = self.latest.lock().expect("open work lock");
        let (taken, work) = latest.as_ref()?;
        (taken.elapsed() <= self.max_age).then(|| work.clone())
    }
}

/// State the gauge callbacks read.
#[derive(Default)]
struct Observed {
    worker: Mutex<Option<ObservedWorker>>,
}

impl Observed {
    fn with_worker<T>(&self, read: impl FnOnce(&ObservedWorker) -> T) -> Option<T> {
        self.worker
            .lock()
            .expect("observed worker lock")
            .as_ref()
            .map(read)
    }

    fn open_work(&self) -> Option<OpenWork> {
        self.with_worker(|worker| worker.open_work.fresh())
            .flatten()
    }
}

/// Registers the gauges; the meter provider keeps their callbacks for its lifetime.
fn register_gauges(meter: &Meter, observed: &Arc<Observed>) {
    let state = observed.clone();
    meter
        .u64_observable_gauge("erp_sync.commands")
        .with_unit("{command}")
        .with_description("Open commands by state: pending, running or parked.")
        .with_callback(move |observer| {
            let Some(work) = state.open_work() else {
                return;
            };
            for (name, count) in [
                ("pending", work.pending),
                ("running", work.running),
                ("parked", work.parked_total()),
            ] {
                observer.observe(count, &[KeyValue::new(attribute::COMMAND_STATE, name)]);
            }
        })
        .build();

    let state = observed.clone();
    meter
        .u64_observable_gauge("erp_sync.commands.due")
        .with_unit("{command}")
        .with_description("Pending commands whose next attempt time has passed.")
        .with_callback(move |observer| {
            if let Some(work) = state.open_work() {
                observer.observe(work.due, &[]);
            }
        })
        .build();

    let state = observed.clone();
    meter
        .f64_observable_gauge("erp_sync.dispatch.lag")
        .with_unit("s")
        .with_description(
            "How long the oldest due command has waited past its next attempt time; 0 when nothing is due.",
        )
        .with_callback(move |observer| {
            if let Some(work) = state.open_work() {
                observer.observe(work.oldest_due_age.unwrap_or_default().as_secs_f64(), &[]);
            }
        })
        .build();

    let state = observed.clone();
    meter
        .u64_observable_gauge("erp_sync.commands.parked")
        .with_unit("{command}")
        .with_description("Parked commands waiting for an operator, by park reason.")
        .with_callback(move |observer| {
            let Some(work) = state.open_work() else {
                return;
            };
            for (reason, count) in &work.parked {
                observer.observe(
                    *count,
                    &[KeyValue::new(attribute::PARK_REASON, reason.clone())],
                );
            }
        })
        .build();

    let state = observed.clone();
    meter
        .u64_observable_gauge("erp_sync.events.unsettled")
        .with_unit("{event}")
        .with_description("Events with a pending or running command.")
        .with_callback(move |observer| {
            if let Some(work) = state.open_work() {
                observer.observe(work.unsettled_events, &[]);
            }
        })
        .build();

    register_connection_gauges(meter, observed);
}

/// A gauge that reports one readiness flag as 1 or 0.
struct ReadinessGauge {
    name: &'static str,
    description: &'static str,
    read: fn(&Readiness) -> bool,
}

const READINESS_GAUGES: [ReadinessGauge; 3] = [
    ReadinessGauge {
        name: "erp_sync.broker.consumer.active",
        description: "1 while the worker has a consumer on the work queue, 0 while it reconnects to RabbitMQ.",
        read: Readiness::is_consuming,
    },
    ReadinessGauge {
        name: "erp_sync.database.reachable",
        description: "1 while the last database operation succeeded, 0 after one failed.",
        read: Readiness::is_database_reachable,
    },
    ReadinessGauge {
        name: "erp_sync.dispatch.paused",
        description: "1 while dispatch is paused because the platform rejected the API token (401), otherwise 0.",
        read: Readiness::is_dispatch_paused,
    },
];

/// Registers the gauges read from the readiness flags and the connection pool.
fn register_connection_gauges(meter: &Meter, observed: &Arc<Observed>) {
    for flag in READINESS_GAUGES {
        let state = observed.clone();
        meter
            .u64_observable_gauge(flag.name)
            .with_description(flag.description)
            .with_callback(move |observer| {
                if let Some(up) = state.with_worker(|worker| (flag.read)(&worker.readiness)) {
                    observer.observe(u64::from(up), &[]);
                }
            })
            .build();
    }

    let pool = KeyValue::new(semconv::DB_CLIENT_CONNECTION_POOL_NAME, POOL_NAME);
    let state = observed.clone();
    let pool_name = pool.clone();
    meter
        .i64_observable_up_down_counter(semconv_metric::DB_CLIENT_CONNECTION_COUNT)
        .with_unit("{connection}")
        .with_description("Open connections of the database pool, idle or in use.")
        .with_callback(move |observer| {
            let Some(usage) = state.with_worker(|worker| worker.database.pool_usage()) else {
                return;
            };
            for (connection_state, count) in [("idle", usage.idle), ("used", usage.used)] {
                observer.observe(
                    i64::from(count),
                    &[
                        pool_name.clone(),
                        KeyValue::new(semconv::DB_CLIENT_CONNECTION_STATE, connection_state),
                    ],
                );
            }
        })
        .build();

    let state = observed.clone();
    meter
        .i64_observable_up_down_counter(semconv_metric::DB_CLIENT_CONNECTION_MAX)
        .with_unit("{connection}")
        .with_description("Largest number of connections the database pool opens.")
        .with_callback(move |observer| {
            if let Some(usage) = state.with_worker(|worker| worker.database.pool_usage()) {
                observer.observe(i64::from(usage.max), std::slice::from_ref(&pool));
            }
        })
        .build();
}
