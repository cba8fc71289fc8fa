//! Planning commands inside a transaction: coalescing synchronizations and retiring
//! stale ERP-link commands.
//!
//! Both ingest (an event's own commands) and dispatch (the synchronizations a seller's
//! listing finds, a link resolved from its pair) plan commands here, so the rules are
//! the same wherever a command comes from:
//!
//! - A synchronization joins a pending, not yet attempted synchronization of the same
//!   buyer instead of adding a call; the joined command serves every event and carries
//!   the trace of the newest.
//! - For one ERP link the newest event decides: a pending link command with a newer
//!   pending, running, applied or parked one is superseded and makes no call.
//!
//! Transaction-scoped advisory locks on the object keys, taken in sorted order,
//! serialise the planners of one object across workers, so two of them cannot both miss
//! each other's command.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;
use sqlx::Row as _;
use uuid::Uuid;

use super::audit::{AuditRow, Step};
use super::micros;
use crate::plan::{CommandSpec, SET_ERP_LINK_STATUS, SYNCHRONIZE_BUYER};

/// A command to plan for one or more events.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub spec: CommandSpec,
    pub event_ids: Vec<Uuid>,
    pub enqueue_time: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub parent_id: Option<i64>,
    pub idempotency_key: Uuid,
}

/// Placement of a new command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedCommand {
    pub command_id: i64,
    /// Joined an existing pending synchronization instead of adding one.
    pub coalesced: bool,
}

/// Plans `commands`: coalesces synchronizations, inserts the rest, links every command
/// to its events, and supersedes stale link commands. Audit rows are appended to
/// `audit`; the ids of superseded commands are returned so their events can be settled.
pub(super) async fn plan_commands(
    transaction: &mut PgConnection,
    commands: &[NewCommand],
    coalesce_window: Duration,
    audit: &mut Vec<AuditRow>,
) -> sqlx::Result<(Vec<PlannedCommand>, Vec<i64>)> {
    if commands.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }

    let keys: BTreeSet<String> = commands
        .iter()
        .filter(|command| matches!(command.spec.kind(), SYNCHRONIZE_BUYER | SET_ERP_LINK_STATUS))
        .map(|command| command.spec.object_key())
        .collect();
    lock_object_keys(transaction, &keys).await?;

    let joinable = pending_synchronizations(transaction, commands).await?;
    let (leaders, targets) = choose_leaders(commands, &joinable);
    let inserted = insert_leaders(transaction, commands, &leaders, coalesce_window).await?;

    let mut planned = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        let (command_id, coalesced) = match targets[index] {
            Target::Existing(id) => (id, true),
            Target::Leader(leader) => (inserted[&leader], leader != index),
        };
        planned.push(PlannedCommand {
            command_id,
            coalesced,
        });
        for event_id in &command.event_ids {
            let step = if coalesced {
                Step::Coalesced
            } else {
                Step::CommandPlanned
            };
            audit.push(
                AuditRow::new(step)
                    .event(*event_id)
                    .command(command_id)
                    .object(Some(command.spec.object_id()))
                    .trace(command.traceparent.as_deref())
                    .detail(json!({ "spec": command.spec, "idempotencyKey": command.idempotency_key, "parent": command.parent_id })),
            );
        }
    }

    link_events(transaction, commands, &planned).await?;
    refresh_joined_commands(transaction, commands, &planned).await?;

    let link_keys: Vec<String> = commands
        .iter()
        .filter(|command| command.spec.kind() == SET_ERP_LINK_STATUS)
        .map(|command| command.spec.object_key())
        .collect();
    let superseded = supersede_stale_link_commands(transaction, &link_keys, audit).await?;
    Ok((planned, superseded))
}

/// Takes a transaction-scoped advisory lock per object key, in sorted order so two
/// planners cannot deadlock.
pub(super) async fn lock_object_keys(
    transaction: &mut PgConnection,
    keys: &BTreeSet<String>,
) -> sqlx::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(key, 0)) \
         FROM unnest($1::text[]) WITH ORDINALITY AS keys(key, position) ORDER BY position",
    )
    .bind(keys)
    .execute(&mut *transaction)
    .await?;
    Ok(())
}

/// Finds the oldest pending, never attempted synchronization of each buyer the batch
/// plans to synchronize, and locks it so a claim cannot start it while events join it.
async fn pending_synchronizations(
    transaction: &mut PgConnection,
    commands: &[NewCommand],
) -> sqlx::Result<HashMap<String, i64>> {
    let keys: Vec<String> = commands
        .iter()
        .filter(|command| command.spec.kind() == SYNCHRONIZE_BUYER)
        .map(|command| command.spec.object_key())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }

    let rows = sqlx::query(
        "SELECT id, object_key FROM commands \
         WHERE object_key = ANY($1) AND kind = $2 AND state = 'pending' AND attempts = 0 \
         ORDER BY id FOR UPDATE",
    )
    .bind(&keys)
    .bind(SYNCHRONIZE_BUYER)
    .fetch_all(&mut *transaction)
    .await?;

    let mut oldest = HashMap::new();
    for row in rows {
        oldest
            .entry(row.try_get::<String, _>("object_key")?)
            .or_insert(row.try_get::<i64, _>("id")?);
    }
    Ok(oldest)
}

/// Destination of a new command: an existing command, or the command inserted for
/// the first new command of its buyer in this batch (the leader, by index).
#[derive(Debug, Clone, Copy)]
enum Target {
    Existing(i64),
    Leader(usize),
}

fn choose_leaders(
    commands: &[NewCommand],
    joinable: &HashMap<String, i64>,
) -> (Vec<usize>, Vec<Target>) {
    let mut leaders = Vec::new();
    let mut leader_of_key: HashMap<String, usize> = HashMap::new();
    let mut targets = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        if command.spec.kind() != SYNCHRONIZE_BUYER {
            leaders.push(index);
            targets.push(Target::Leader(index));
            continue;
        }
        let key = command.spec.object_key();
        if let Some(existing) = joinable.get(&key) {
            targets.push(Target::Existing(*existing));
        } else if let Some(leader) = leader_of_key.get(&key) {
            targets.push(Target::Leader(*leader));
        } else {
            leader_of_key.insert(key, index);
            leaders.push(index);
            targets.push(Target::Leader(index));
        }
    }
    (leaders, targets)
}

/// Inserts the leaders and returns the command id of each, by index.
async fn insert_leaders(
    transaction: &mut PgConnection,
    commands: &[NewCommand],
    leaders: &[usize],
    coalesce_window: Duration,
) -> sqlx::Result<HashMap<usize, i64>> {
    if leaders.is_empty() {
        return Ok(HashMap::new());
    }
    let chosen = || leaders.iter().map(|index| &commands[*index]);
    let kinds: Vec<&str> = chosen().map(|command| command.spec.kind()).collect();
    let object_keys: Vec<String> = chosen().map(|command| command.spec.object_key()).collect();
    let object_ids: Vec<&str> = chosen().map(|command| command.spec.object_id()).collect();
    let specs: Vec<serde_json::Value> = chosen()
        .map(|command| {
            serde_json::to_value(&command.spec).expect("a command spec serializes to JSON")
        })
        .collect();
    let enqueue_times: Vec<DateTime<Utc>> = chosen().map(|command| command.enqueue_time).collect();
    let keys: Vec<Uuid> = chosen().map(|command| command.idempotency_key).collect();
    let traceparents: Vec<Option<&str>> = chosen()
        .map(|command| command.traceparent.as_deref())
        .collect();
    let tracestates: Vec<Option<&str>> = chosen()
        .map(|command| command.tracestate.as_deref())
        .collect();
    let parents: Vec<Option<i64>> = chosen().map(|command| command.parent_id).collect();
    let delays: Vec<i64> = chosen()
        .map(|command| match command.spec.kind() {
            SYNCHRONIZE_BUYER => micros(coalesce_window),
            _ => 0,
        })
        .collect();

    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO commands (kind, object_key, object_id, spec, enqueue_time, idempotency_key, \
                               traceparent, tracestate, parent_id, next_attempt_at) \
         SELECT kind, object_key, object_id, spec, enqueue_time, idempotency_key, traceparent, \
                tracestate, parent_id, now() + delay * interval '1 microsecond' \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], \
                     $6::uuid[], $7::text[], $8::text[], $9::int8[], $10::int8[]) \
              AS u(kind, object_key, object_id, spec, enqueue_time, idempotency_key, traceparent, \
                   tracestate, parent_id, delay) \
         RETURNING id, idempotency_key",
    )
    .bind(kinds)
    .bind(object_keys)
    .bind(object_ids)
    .bind(specs)
    .bind(enqueue_times)
    .bind(&keys)
    .bind(traceparents)
    .bind(tracestates)
    .bind(parents)
    .bind(delays)
    .fetch_all(&mut *transaction)
    .await?;

    let by_key: HashMap<Uuid, i64> = rows.into_iter().map(|(id, key)| (key, id)).collect();
    Ok(leaders
        .iter()
        .zip(keys)
        .map(|(index, key)| (*index, by_key[&key]))
        .collect())
}

async fn link_events(
    transaction: &mut PgConnection,
    commands: &[NewCommand],
    planned: &[PlannedCommand],
) -> sqlx::Result<()> {
    let mut command_ids = Vec::new();
    let mut event_ids = Vec::new();
    for (command, planned) in commands.iter().zip(planned) {
        for event_id in &command.event_ids {
            command_ids.push(planned.command_id);
            event_ids.push(*event_id);
        }
    }
    sqlx::query(
        "INSERT INTO command_events (command_id, event_id) \
         SELECT * FROM unnest($1::int8[], $2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(command_ids)
    .bind(event_ids)
    .execute(&mut *transaction)
    .await?;
    Ok(())
}

/// Gives each joined command the enqueue time and trace of the newest event it serves.
async fn refresh_joined_commands(
    transaction: &mut PgConnection,
    commands: &[NewCommand],
    planned: &[PlannedCommand],
) -> sqlx::Result<()> {
    let mut newest: HashMap<i64, &NewCommand> = HashMap::new();
    for (command, planned) in commands
        .iter()
        .zip(planned)
        .filter(|(_, planned)| planned.coalesced)
    {
        let entry = newest.entry(planned.command_id).or_insert(command);
        if command.enqueue_time >= entry.enqueue_time {
            *entry = command;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }

    let ids: Vec<i64> = newest.keys().copied().collect();
    let times: Vec<DateTime<Utc>> = ids.iter().map(|id| newest[id].enqueue_time).collect();
    let traceparents: Vec<Option<&str>> = ids
        .iter()
        .map(|id| newest[id].traceparent.as_deref())
        .collect();
    let tracestates: Vec<Option<&str>> = ids
        .iter()
        .map(|id| newest[id].tracestate.as_deref())
        .collect();
    sqlx::query(
        "UPDATE commands c \
         SET enqueue_time = greatest(c.enqueue_time, u.enqueue_time), \
             traceparent = CASE WHEN u.enqueue_time >= c.enqueue_time THEN coalesce(u.traceparent, c.traceparent) \
                                ELSE c.traceparent END, \
             tracestate = CASE WHEN u.enqueue_time >= c.enqueue_time THEN u.tracestate ELSE c.tracestate END, \
             updated_at = now() \
         FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::text[]) \
              AS u(id, enqueue_time, traceparent, tracestate) \
         WHERE c.id = u.id",
    )
    .bind(ids)
    .bind(times)
    .bind(traceparents)
    .bind(tracestates)
    .execute(&mut *transaction)
    .await?;
    Ok(())
}

/// Supersedes every pending command of the given links that has a newer pending,
/// running, applied or parked command of the same link. Returns the superseded ids.
pub(super) async fn supersede_stale_link_commands(
    transaction: &mut PgConnection,
    link_keys: &[String],
    audit: &mut Vec<AuditRow>,
) -> sqlx::Result<Vec<i64>> {
    if link_keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH stale AS ( \
             SELECT c.id, newer.id AS newer_id \
             FROM commands c \
             CROSS JOIN LATERAL ( \
                 SELECT n.id FROM commands n \
                 WHERE n.object_key = c.object_key AND n.kind = c.kind \
                   AND n.state IN ('pending', 'running', 'applied', 'parked') \
                   AND (n.enqueue_time, n.id) > (c.enqueue_time, c.id) \
                 ORDER BY n.enqueue_time DESC, n.id DESC LIMIT 1) AS newer \
             WHERE c.object_key = ANY($1) AND c.kind = $2 AND c.state = 'pending' \
         ) \
         UPDATE commands c \
         SET state = 'superseded', finished_at = now(), updated_at = now() \
         FROM stale WHERE c.id = stale.id \
         RETURNING c.id, c.object_id, c.traceparent, stale.newer_id",
    )
    .bind(link_keys)
    .bind(SET_ERP_LINK_STATUS)
    .fetch_all(&mut *transaction)
    .await?;

    let mut superseded = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let object_id: String = row.try_get("object_id")?;
        let traceparent: Option<String> = row.try_get("traceparent")?;
        let newer: i64 = row.try_get("newer_id")?;
        audit.push(
            AuditRow::new(Step::Superseded)
                .command(id)
                .object(Some(&object_id))
                .trace(traceparent.as_deref())
                .detail(json!({ "newerCommand": newer, "reason": "a newer event about the same ERP link decides its status" })),
        );
        superseded.push(id);
    }
    Ok(superseded)
}
