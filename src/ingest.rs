//! From the work queue to the outbox: each batch of deliveries is validated, bad input
//! is dead-lettered, and everything is stored in one transaction before the batch is
//! acknowledged. A delivery is never acknowledged before its event is committed.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument as _, Span, debug, error, info, warn};

use crate::broker::{BrokerError, BrokerLink, ConsumerSession, DeadLetterPublisher, Inbound};
use crate::config::Config;
use crate::event::parse_event;
use crate::health::Readiness;
use crate::plan::plan_event;
use crate::storage::{
    Database, IngestItem, IngestResult, RejectedMessage, StoredBatch, StoredEvent,
};
use crate::telemetry::context::TraceContext;
use crate::telemetry::metrics::{DeliveryLabels, metrics};
use crate::telemetry::report_settled;

/// Longest pause between two attempts to store a batch while the database is down.
const MAX_STORE_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Consumes the work queue until `shutdown`, reconnecting after broker failures.
///
/// Returns an error when the topology conflicts with existing broker objects, or when
/// no consumer could be kept running for `amqp.max_unavailable`, so that a supervisor
/// restarts the process instead of leaving it connected with no consumer.
pub async fn run_ingest(
    config: Arc<Config>,
    database: Database,
    readiness: Arc<Readiness>,
    worker_id: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut reconnect = Reconnect::new(&config);
    loop {
        let result = consume_until_failure(
            &config,
            &database,
            &readiness,
            &worker_id,
            &shutdown,
            &mut reconnect,
        )
        .await;
        readiness.set_consuming(false);

        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) if !error.is_recoverable() => return Err(error.into()),
            Err(error) => error,
        };
        let unavailable_for = reconnect.failed(&error);
        if unavailable_for > config.amqp.max_unavailable {
            anyhow::bail!(
                "no consumer on {:?} for {} (last error: {error}); exiting so that a supervisor restarts erp-sync",
                config.amqp.queue,
                humantime::format_duration(Duration::from_secs(unavailable_for.as_secs()))
            );
        }

        let delay = reconnect.next_delay();
        debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to RabbitMQ"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The reconnection schedule and the bookkeeping that keeps one outage to one log line.
struct Reconnect {
    builder: ExponentialBuilder,
    backoff: backon::ExponentialBackoff,
    unavailable_since: Option<Instant>,
    last_error: Option<String>,
}

impl Reconnect {
    fn new(config: &Config) -> Reconnect {
        let builder = ExponentialBuilder::new()
            .with_min_delay(config.amqp.reconnect_min_delay)
            .with_max_delay(config.amqp.reconnect_max_delay)
            .with_jitter()
            .without_max_times();
        Reconnect {
            builder,
            backoff: builder.build(),
            unavailable_since: None,
            last_error: None,
        }
    }

    /// Records a failure and returns how long the worker has been without a consumer.
    fn failed(&mut self, error: &BrokerError) -> Duration {
        let message = error.to_string();
        if self.last_error.as_deref() != Some(message.as_str()) {
            error!(error = %message, "RabbitMQ consumer lost; reconnecting");
            self.last_error = Some(message);
        } else {
            debug!(error = %message, "RabbitMQ is still unavailable");
        }
        self.unavailable_since
            .get_or_insert_with(Instant::now)
            .elapsed()
    }

    fn next_delay(&mut self) -> Duration {
        self.backoff.next().unwrap_or(Duration::from_secs(30))
    }

    /// Forgets the outage once a consumer runs again.
    fn recovered(&mut self) {
        if self.unavailable_since.take().is_some() {
            info!("RabbitMQ consumer recovered");
        }
        self.last_error = None;
        self.backoff = self.builder.build();
    }
}

/// One connection's life: connect, declare, consume batches until shutdown (`Ok`) or a
/// failure (`Err`).
async fn consume_until_failure(
    config: &Config,
    database: &Database,
    readiness: &Readiness,
    worker_id: &str,
    shutdown: &CancellationToken,
    reconnect: &mut Reconnect,
) -> Result<(), BrokerError> {
    let link = BrokerLink::connect(&config.amqp).await?;
    link.declare_topology().await?;
    let dead_letters = link.dead_letter_publisher().await?;
    let session = link.consume(&format!("erp-sync-{worker_id}")).await?;

    readiness.set_consuming(true);
    reconnect.recovered();
    info!(queue = %config.amqp.queue, prefetch = config.amqp.prefetch, "consuming events");

    let batches = BatchProcessor {
        config,
        database,
        readiness,
        dead_letters: &dead_letters,
        shutdown,
        broker: BrokerAddress::of(config),
    };
    let result = batches.run(session).await;
    // Closing the connection ends the consumer and returns every delivery not yet
    // acknowledged to the queue. It waits for the broker at most one operation timeout,
    // so a shutdown during a network stall still ends within that time.
    link.close().await;
    result
}

/// Host and port of the broker, for the `server.*` attributes of delivery spans.
struct BrokerAddress {
    host: String,
    port: u16,
}

impl BrokerAddress {
    fn of(config: &Config) -> BrokerAddress {
        let url = url::Url::parse(config.amqp.url.expose()).ok();
        let secure = url.as_ref().is_some_and(|url| url.scheme() == "amqps");
        BrokerAddress {
            host: url
                .as_ref()
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default(),
            port: url
                .and_then(|url| url.port())
                .unwrap_or(if secure { 5671 } else { 5672 }),
        }
    }
}

struct BatchProcessor<'a> {
    config: &'a Config,
    database: &'a Database,
    readiness: &'a Readiness,
    dead_letters: &'a DeadLetterPublisher,
    shutdown: &'a CancellationToken,
    broker: BrokerAddress,
}

impl BatchProcessor<'_> {
    async fn run(&self, mut session: ConsumerSession) -> Result<(), BrokerError> {
        loop {
            let batch = session
                .next_batch(
                    self.config.ingest.batch_size,
                    self.config.ingest.batch_linger,
                    self.shutdown,
                )
                .await?;
            if batch.is_empty() {
                return Ok(());
            }

            let spans: Vec<Span> = batch
                .iter()
                .map(|inbound| delivery_span(inbound, &self.broker))
                .collect();
            let Some((items, stored)) = self.store(&batch, &spans).await? else {
                // Shut down while the database was unavailable: nothing of the batch is
                // acknowledged, so the broker delivers it again later.
                return Ok(());
            };
            session.ack(&batch).await?;
            finish_deliveries(&batch, &spans, &items, &stored.results);
            report_settled(&stored.settled);
        }
    }

    /// Dead-letters the bad deliveries, then stores the batch, retrying while the
    /// database is unavailable. Returns `None` when shutdown came first.
    async fn store(
        &self,
        batch: &[Inbound],
        spans: &[Span],
    ) -> Result<Option<(Vec<IngestItem>, StoredBatch)>, BrokerError> {
        let max_bytes = self.config.amqp.max_message_bytes;
        let mut items = Vec::with_capacity(batch.len());
        for (inbound, span) in batch.iter().zip(spans) {
            items.push(self.classify(inbound, span, max_bytes).await?);
        }

        let mut delay = Duration::from_millis(100);
        let mut logged = false;
        loop {
            match self.database.store_batch(&items).await {
                Ok(stored) => {
                    if logged {
                        info!("database reachable again; storing events");
                    }
                    self.readiness.set_database_reachable(true);
                    return Ok(Some((items, stored)));
                }
                Err(error) => {
                    self.readiness.set_database_reachable(false);
                    self.database.discard_connections_after(&error);
                    if !logged {
                        error!(error = %error, deliveries = batch.len(), "cannot store events; holding the batch unacknowledged and retrying");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_STORE_RETRY_DELAY);
        }
    }

    /// Turns a delivery into an event with its plan, or into a published dead letter.
    /// The event keeps the trace context of the delivery's span, so the spans of its
    /// commands descend from it.
    async fn classify(
        &self,
        inbound: &Inbound,
        span: &Span,
        max_bytes: usize,
    ) -> Result<IngestItem, BrokerError> {
        match parse_event(&inbound.body, max_bytes) {
            Ok(event) => {
                metrics().delivery_received(delivery_labels(inbound, None));
                span.record("event.id", tracing::field::display(event.id));
                span.record("event.type", event.event_type.as_str());
                span.record("object.type", event.subject.object_type());
                if let Some(object_id) = event.subject.object_id() {
                    span.record("object.id", object_id);
                }
                let trace = TraceContext::of_span(span).unwrap_or_else(|| {
                    TraceContext::new(inbound.traceparent.clone(), inbound.tracestate.clone())
                });

                let plan = plan_event(&event);
                Ok(IngestItem::Event(StoredEvent {
                    event,
                    plan,
                    routing_key: inbound.routing_key.clone(),
                    traceparent: trace.traceparent,
                    tracestate: trace.tracestate,
                    size_bytes: inbound.body.len(),
                    redelivered: inbound.redelivered,
                }))
            }
            Err(rejection) => {
                let reason = rejection.reason.as_str();
                metrics().delivery_received(delivery_labels(inbound, Some(reason)));
                self.dead_letters
                    .publish(inbound, reason, &rejection.detail)
                    .instrument(span.clone())
                    .await?;
                let within_limit = inbound.body.len() <= max_bytes;
                Ok(IngestItem::Rejected(RejectedMessage {
                    rejection,
                    routing_key: inbound.routing_key.clone(),
                    message_id: inbound.message_id.clone(),
                    body: within_limit.then(|| inbound.body.clone()),
                    size_bytes: inbound.body.len(),
                    sha256: hex::encode(Sha256::digest(&inbound.body)),
                }))
            }
        }
    }
}

/// Opens the span of one delivery: a consumer span of the messaging semantic
/// conventions. A valid `traceparent` header makes it the producer's child; without
/// one the delivery starts a new trace. The span ends when the delivery is
/// acknowledged.
fn delivery_span(inbound: &Inbound, broker: &BrokerAddress) -> Span {
    // Named `{operation} {destination}`; the default exchange has an empty name.
    let name = if inbound.exchange.is_empty() {
        "process".to_owned()
    } else {
        format!("process {}", inbound.exchange)
    };
    let span = tracing::info_span!(
        "delivery",
        otel.name = %name,
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %inbound.exchange,
        messaging.rabbitmq.destination.routing_key = %inbound.routing_key,
        messaging.rabbitmq.message.delivery_tag = inbound.delivery_tag,
        messaging.message.id = inbound.message_id.as_deref(),
        messaging.message.body.size = inbound.body.len() as u64,
        server.address = %broker.host,
        server.port = broker.port,
        event.id = Empty,
        event.type = Empty,
        object.type = Empty,
        object.id = Empty,
        erp_sync.ingest.result = Empty,
        error.type = Empty,
    );
    TraceContext::new(inbound.traceparent.clone(), inbound.tracestate.clone()).adopt(&span);
    span
}

fn delivery_labels<'a>(inbound: &'a Inbound, error_type: Option<&'a str>) -> DeliveryLabels<'a> {
    DeliveryLabels {
        destination: &inbound.exchange,
        error_type,
    }
}

/// Completes each acknowledged delivery: records its result on its span and in the
/// metrics, and writes one line for each delivery that settled at ingest. Planned
/// events are logged when their commands finish.
fn finish_deliveries(
    batch: &[Inbound],
    spans: &[Span],
    items: &[IngestItem],
    results: &[IngestResult],
) {
    for (((inbound, span), item), result) in batch.iter().zip(spans).zip(items).zip(results) {
        let reason = match item {
            IngestItem::Rejected(message) => Some(message.rejection.reason.as_str()),
            IngestItem::Event(_) => None,
        };
        let (result_name, outcome) = match result {
            IngestResult::Planned { .. } => ("planned", None),
            IngestResult::Ignored => ("ignored", Some("ignored")),
            IngestResult::Duplicate => ("duplicate", Some("duplicate")),
            IngestResult::DeadLettered { .. } => ("dead_lettered", Some("dead_lettered")),
        };
        span.record("erp_sync.ingest.result", result_name);
        if let Some(reason) = reason {
            span.record("error.type", reason);
            span.record("otel.status_code", "ERROR");
            metrics().dead_lettered(reason);
        }
        metrics().delivery_processed(
            delivery_labels(inbound, reason),
            inbound.received_at.elapsed(),
        );
        if let Some(outcome) = outcome {
            metrics().delivery_settled(outcome);
        }

        let _entered = span.enter();
        log_result(item, result, span);
    }
}

/// Writes the line of one delivery, inside its span.
fn log_result(item: &IngestItem, result: &IngestResult, span: &Span) {
    let trace_id = || TraceContext::of_span(span).and_then(|trace| trace.trace_id());
    match (item, result) {
        (IngestItem::Event(stored), IngestResult::Planned { commands }) => {
            debug!(event.id = %stored.event.id, object.id = stored.event.subject.object_id(), commands, "event stored");
        }
        (IngestItem::Event(stored), IngestResult::Ignored | IngestResult::Duplicate) => {
            let outcome = if *result == IngestResult::Ignored {
                "ignored"
            } else {
                "duplicate"
            };
            info!(
                event.id = %stored.event.id,
                object.id = stored.event.subject.object_id(),
                event.type = %stored.event.event_type,
                redelivered = stored.redelivered,
                outcome,
                trace_id = trace_id(),
                "event settled"
            );
        }
        (IngestItem::Rejected(message), IngestResult::DeadLettered { id }) => {
            warn!(
                dead_letter.id = id,
                event.id = message.rejection.event_id.map(|id| id.to_string()),
                routing_key = %message.routing_key,
                reason = %message.rejection.reason,
                detail = %message.rejection.detail,
                size_bytes = message.size_bytes,
                outcome = "dead_lettered",
                trace_id = trace_id(),
                "message dead-lettered"
            );
        }
        _ => {}
    }
}
