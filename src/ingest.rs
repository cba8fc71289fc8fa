//! From the work queue to the outbox: each batch of deliveries is validated, bad input
//! is dead-lettered, and everything is stored in one transaction before the batch is
//! acknowledged. A delivery is never acknowledged before its event is committed.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::{BrokerError, BrokerLink, ConsumerSession, DeadLetterPublisher, Inbound};
use crate::config::Config;
use crate::event::parse_event;
use crate::health::Readiness;
use crate::plan::plan_event;
use crate::storage::{
    Database, IngestItem, IngestResult, RejectedMessage, StoredBatch, StoredEvent,
};

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
    };
    let result = batches.run(session).await;
    // Closing the connection ends the consumer and returns every delivery not yet
    // acknowledged to the queue. It waits for the broker at most one operation timeout,
    // so a shutdown during a network stall still ends within that time.
    link.close().await;
    result
}

struct BatchProcessor<'a> {
    config: &'a Config,
    database: &'a Database,
    readiness: &'a Readiness,
    dead_letters: &'a DeadLetterPublisher,
    shutdown: &'a CancellationToken,
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

            let Some((items, stored)) = self.store(&batch).await? else {
                // Shut down while the database was unavailable: nothing of the batch is
                // acknowledged, so the broker delivers it again later.
                return Ok(());
            };
            session.ack(&batch).await?;
            log_results(&items, &stored.results);
            for event in &stored.settled {
                info!(event.id = %event.id, object.id = event.object_id.as_deref().unwrap_or(""), outcome = %event.outcome, "event settled");
            }
        }
    }

    /// Dead-letters the bad deliveries, then stores the batch, retrying while the
    /// database is unavailable. Returns `None` when shutdown came first.
    async fn store(
        &self,
        batch: &[Inbound],
    ) -> Result<Option<(Vec<IngestItem>, StoredBatch)>, BrokerError> {
        let max_bytes = self.config.amqp.max_message_bytes;
        let mut items = Vec::with_capacity(batch.len());
        for inbound in batch {
            items.push(self.classify(inbound, max_bytes).await?);
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
    async fn classify(
        &self,
        inbound: &Inbound,
        max_bytes: usize,
    ) -> Result<IngestItem, BrokerError> {
        match parse_event(&inbound.body, max_bytes) {
            Ok(event) => {
                let plan = plan_event(&event);
                Ok(IngestItem::Event(StoredEvent {
                    event,
                    plan,
                    routing_key: inbound.routing_key.clone(),
                    traceparent: inbound.traceparent.clone(),
                    tracestate: inbound.tracestate.clone(),
                    size_bytes: inbound.body.len(),
                    redelivered: inbound.redelivered,
                }))
            }
            Err(rejection) => {
                self.dead_letters
                    .publish(inbound, rejection.reason.as_str(), &rejection.detail)
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

/// Writes one line per delivery that settled at ingest; planned events are logged
/// when their commands finish.
fn log_results(items: &[IngestItem], results: &[IngestResult]) {
    for (item, result) in items.iter().zip(results) {
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
                    "message dead-lettered"
                );
            }
            _ => {}
        }
    }
}
