//! Storing a batch of deliveries: events, their commands, dead letters and the audit
//! rows of all of them, in one transaction that commits before any delivery is acked.

use std::collections::HashSet;

use serde_json::json;
use uuid::Uuid;

use super::audit::{AuditRow, Step, insert_audit_rows};
use super::commands::{SettledEvent, settle_events};
use super::planning::{NewCommand, plan_commands};
use super::{Database, notify_dispatchers};
use crate::event::{Event, Rejection};
use crate::plan::Plan;

/// A valid event with its plan and the delivery facts worth keeping.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub plan: Plan,
    pub routing_key: String,
    /// The trace context of the delivery's span, stored with the event and its
    /// commands so that every later span about them is its child, hours later too.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub size_bytes: usize,
    pub redelivered: bool,
}

/// A message that could not become an event, already published to the dead-letter
/// exchange.
#[derive(Debug, Clone)]
pub struct RejectedMessage {
    pub rejection: Rejection,
    pub routing_key: String,
    pub message_id: Option<String>,
    /// The body, or `None` when it is longer than the size limit.
    pub body: Option<Vec<u8>>,
    pub size_bytes: usize,
    pub sha256: String,
}

/// One delivery of a batch.
#[derive(Debug, Clone)]
pub enum IngestItem {
    Event(StoredEvent),
    Rejected(RejectedMessage),
}

/// Result of storing one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestResult {
    /// A new event with this many planned commands.
    Planned { commands: usize },
    /// A new event that requires no platform call, settled at once.
    Ignored,
    /// An event id that was already received.
    Duplicate,
    /// A dead letter, recorded under this id.
    DeadLettered { id: i64 },
}

/// Result of storing a batch: one result per delivery, and the events that reached
/// their outcome in the same transaction, because stale link commands are superseded
/// at once.
#[derive(Debug, Clone, Default)]
pub struct StoredBatch {
    pub results: Vec<IngestResult>,
    pub settled: Vec<SettledEvent>,
}

impl Database {
    /// Stores a batch of deliveries in one transaction and wakes the dispatchers when
    /// it planned commands. Returns one result per item, in order.
    pub async fn store_batch(&self, items: &[IngestItem]) -> sqlx::Result<StoredBatch> {
        let mut transaction = self.pool().begin().await?;

        let candidates = first_occurrences(items);
        let inserted = insert_events(&mut transaction, &candidates).await?;

        let mut audit = Vec::with_capacity(items.len() * 2);
        let new_commands = new_commands(&candidates, &inserted);
        let received: Vec<&StoredEvent> = candidates
            .iter()
            .copied()
            .filter(|stored| inserted.contains(&stored.event.id))
            .collect();
        for stored in &received {
            audit.push(received_row(stored));
            if let Plan::Ignored(reason) = &stored.plan {
                audit.push(
                    AuditRow::new(Step::Ignored)
                        .event(stored.event.id)
                        .object(stored.event.subject.object_id())
                        .trace(stored.traceparent.as_deref())
                        .detail(json!({ "reason": reason })),
                );
            }
        }
        let (_, superseded) = plan_commands(
            &mut transaction,
            &new_commands,
            self.coalesce_window(),
            &mut audit,
        )
        .await?;

        let mut results = Vec::with_capacity(items.len());
        let mut seen = HashSet::new();
        for item in items {
            match item {
                IngestItem::Event(stored) => {
                    let is_new =
                        inserted.contains(&stored.event.id) && seen.insert(stored.event.id);
                    let result = match (&stored.plan, is_new) {
                        (_, false) => {
                            audit.push(duplicate_row(stored));
                            IngestResult::Duplicate
                        }
                        (Plan::Ignored(_), true) => IngestResult::Ignored,
                        (Plan::Commands(commands), true) => IngestResult::Planned {
                            commands: commands.len(),
                        },
                    };
                    results.push(result);
                }
                IngestItem::Rejected(message) => {
                    let id = insert_dead_letter(&mut transaction, message).await?;
                    audit.push(dead_letter_row(message, id));
                    results.push(IngestResult::DeadLettered { id });
                }
            }
        }

        insert_audit_rows(&mut *transaction, &audit).await?;
        let settled = settle_events(&mut transaction, &superseded).await?;
        if !new_commands.is_empty() {
            notify_dispatchers(&mut transaction).await?;
        }
        transaction.commit().await?;
        Ok(StoredBatch { results, settled })
    }
}

/// Builds the commands planned by the events that were new.
fn new_commands(events: &[&StoredEvent], inserted: &HashSet<Uuid>) -> Vec<NewCommand> {
    let mut commands = Vec::new();
    for stored in events
        .iter()
        .filter(|stored| inserted.contains(&stored.event.id))
    {
        let Plan::Commands(specs) = &stored.plan else {
            continue;
        };
        for spec in specs {
            commands.push(NewCommand {
                spec: spec.clone(),
                event_ids: vec![stored.event.id],
                enqueue_time: stored.event.enqueue_time,
                traceparent: stored.traceparent.clone(),
                tracestate: stored.tracestate.clone(),
                parent_id: None,
                idempotency_key: spec.idempotency_key(stored.event.id),
            });
        }
    }
    commands
}

/// Keeps the events of the batch whose id appears for the first time in it.
fn first_occurrences(items: &[IngestItem]) -> Vec<&StoredEvent> {
    let mut seen = HashSet::new();
    items
        .iter()
        .filter_map(|item| match item {
            IngestItem::Event(stored) if seen.insert(stored.event.id) => Some(stored),
            _ => None,
        })
        .collect()
}

/// Inserts the events and returns the ids that were new.
async fn insert_events(
    transaction: &mut sqlx::PgConnection,
    events: &[&StoredEvent],
) -> sqlx::Result<HashSet<Uuid>> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }

    let ids: Vec<Uuid> = events.iter().map(|stored| stored.event.id).collect();
    let object_types: Vec<&str> = events
        .iter()
        .map(|stored| stored.event.subject.object_type())
        .collect();
    let object_ids: Vec<Option<&str>> = events
        .iter()
        .map(|stored| stored.event.subject.object_id())
        .collect();
    let event_types: Vec<&str> = events
        .iter()
        .map(|stored| stored.event.event_type.as_str())
        .collect();
    let enqueue_times: Vec<_> = events
        .iter()
        .map(|stored| stored.event.enqueue_time)
        .collect();
    let routing_keys: Vec<&str> = events
        .iter()
        .map(|stored| stored.routing_key.as_str())
        .collect();
    let envelopes: Vec<&serde_json::Value> =
        events.iter().map(|stored| &stored.event.envelope).collect();
    let traceparents: Vec<Option<&str>> = events
        .iter()
        .map(|stored| stored.traceparent.as_deref())
        .collect();
    let tracestates: Vec<Option<&str>> = events
        .iter()
        .map(|stored| stored.tracestate.as_deref())
        .collect();
    let outcomes: Vec<Option<&str>> = events
        .iter()
        .map(|stored| matches!(stored.plan, Plan::Ignored(_)).then_some("ignored"))
        .collect();

    let rows: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO events (id, object_type, object_id, event_type, enqueue_time, routing_key, \
                             envelope, traceparent, tracestate, outcome, settled_at) \
         SELECT u.id, u.object_type, u.object_id, u.event_type, u.enqueue_time, u.routing_key, \
                u.envelope, u.traceparent, u.tracestate, u.outcome, \
                CASE WHEN u.outcome IS NULL THEN NULL ELSE now() END \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                     $6::text[], $7::jsonb[], $8::text[], $9::text[], $10::text[]) \
              AS u(id, object_type, object_id, event_type, enqueue_time, routing_key, \
                   envelope, traceparent, tracestate, outcome) \
         ON CONFLICT (id) DO NOTHING \
         RETURNING id",
    )
    .bind(ids)
    .bind(object_types)
    .bind(object_ids)
    .bind(event_types)
    .bind(enqueue_times)
    .bind(routing_keys)
    .bind(envelopes)
    .bind(traceparents)
    .bind(tracestates)
    .bind(outcomes)
    .fetch_all(&mut *transaction)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn insert_dead_letter(
    transaction: &mut sqlx::PgConnection,
    message: &RejectedMessage,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (reason, detail, routing_key, message_id, event_id, size_bytes, sha256, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(message.rejection.reason.as_str())
    .bind(&message.rejection.detail)
    .bind(&message.routing_key)
    .bind(message.message_id.as_deref())
    .bind(message.rejection.event_id)
    .bind(i32::try_from(message.size_bytes).unwrap_or(i32::MAX))
    .bind(&message.sha256)
    .bind(message.body.as_deref())
    .fetch_one(&mut *transaction)
    .await
}

fn received_row(stored: &StoredEvent) -> AuditRow {
    let event = &stored.event;
    AuditRow::new(Step::Received)
        .event(event.id)
        .object(event.subject.object_id())
        .trace(stored.traceparent.as_deref())
        .detail(json!({
            "objectType": event.subject.object_type(),
            "eventType": event.event_type,
            "enqueueTime": event.enqueue_time,
            "routingKey": stored.routing_key,
            "sizeBytes": stored.size_bytes,
            "redelivered": stored.redelivered,
        }))
}

fn duplicate_row(stored: &StoredEvent) -> AuditRow {
    AuditRow::new(Step::Duplicate)
        .event(stored.event.id)
        .object(stored.event.subject.object_id())
        .trace(stored.traceparent.as_deref())
        .detail(json!({
            "routingKey": stored.routing_key,
            "redelivered": stored.redelivered,
        }))
}

fn dead_letter_row(message: &RejectedMessage, id: i64) -> AuditRow {
    let mut row = AuditRow::new(Step::DeadLettered).detail(json!({
        "reason": message.rejection.reason.as_str(),
        "detail": message.rejection.detail,
        "routingKey": message.routing_key,
        "sizeBytes": message.size_bytes,
        "sha256": message.sha256,
    }));
    row.dead_letter_id = Some(id);
    row.event_id = message.rejection.event_id;
    row
}
