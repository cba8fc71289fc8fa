//! Claiming due commands, recording the outcome of attempts, and settling events.
//!
//! A claim is one statement in a short transaction: it picks due commands that are
//! first in line for their object, takes the object's lease in `object_leases`, and
//! marks the commands running.
//! The lease row is what keeps two workers from calling the platform about one object
//! at the same time, because its primary key admits one holder per object.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row as _;
use uuid::Uuid;

use super::audit::{AuditRow, Step, insert_audit_rows};
use super::planning::{NewCommand, lock_object_keys, plan_commands, supersede_stale_link_commands};
use super::{Database, micros, notify_dispatchers};
use crate::ids::BuyerId;
use crate::plan::CommandSpec;

/// A command this worker holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedCommand {
    pub id: i64,
    pub spec: CommandSpec,
    pub object_key: String,
    /// The number of this attempt, starting at 1.
    pub attempt: u32,
    pub idempotency_key: Uuid,
    /// The trace context that every attempt's span is a child of: the span of the
    /// delivery of the newest event the command serves.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The events the command serves, oldest first.
    pub event_ids: Vec<Uuid>,
    /// The stored trace context of each event in `event_ids`, so that an attempt can
    /// link to the deliveries of the events it does not descend from.
    pub event_traceparents: Vec<Option<String>>,
}

/// Outcome of an attempt for the command's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// The effect is in place on the platform.
    Applied,
    /// Try again after this delay, measured from the database's clock.
    Retry { delay: Duration },
    /// Failed for good, with one of the contract's park reasons.
    Parked { reason: &'static str },
    /// Not the command's fault (the token was refused): try again after the delay
    /// without counting this attempt.
    Deferred { delay: Duration },
    /// The command continues as another spec at once, such as a link command once its
    /// link was resolved from its buyer and seller.
    Continue { spec: CommandSpec },
}

/// Work an applied command leaves behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FollowUp {
    #[default]
    None,
    /// Plan a synchronization of each buyer, for the events the command serves.
    SynchronizeBuyers(Vec<BuyerId>),
}

impl Finish {
    /// Returns the name of the decision, as audit rows and metrics give it.
    pub fn name(&self) -> &'static str {
        match self {
            Finish::Applied => "applied",
            Finish::Retry { .. } => "retry",
            Finish::Parked { .. } => "parked",
            Finish::Deferred { .. } => "deferred",
            Finish::Continue { .. } => "continue",
        }
    }

    fn state(&self) -> &'static str {
        match self {
            Finish::Applied => "applied",
            Finish::Parked { .. } => "parked",
            Finish::Retry { .. } | Finish::Deferred { .. } | Finish::Continue { .. } => "pending",
        }
    }

    fn delay(&self) -> Duration {
        match self {
            Finish::Retry { delay } | Finish::Deferred { delay } => *delay,
            Finish::Applied | Finish::Parked { .. } | Finish::Continue { .. } => Duration::ZERO,
        }
    }
}

/// The result of one attempt, ready to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub command: ClaimedCommand,
    pub finish: Finish,
    /// Status of the platform's last response, when there was one.
    pub http_status: Option<u16>,
    /// The failure, in one line, when the attempt failed.
    pub error: Option<String>,
    pub duration: Duration,
    /// Machine-readable facts of the attempt: the calls made, the platform's Problem
    /// Details, the decision taken.
    pub detail: Value,
    /// Commands to plan once the outcome is recorded.
    pub follow_up: FollowUp,
    /// The trace context of the attempt's span, when telemetry gave it one. It is the
    /// parent of the commands the attempt plans, and of later attempts of a command
    /// that had no trace context before.
    pub attempt_traceparent: Option<String>,
    pub attempt_tracestate: Option<String>,
}

impl AttemptRecord {
    /// Returns the trace context that the attempt's audit rows name: the attempt's
    /// own, else the command's.
    pub fn traceparent(&self) -> Option<&str> {
        self.attempt_traceparent
            .as_deref()
            .or(self.command.traceparent.as_deref())
    }
}

/// An event that reached its outcome.
#[derive(Debug, Clone)]
pub struct SettledEvent {
    pub id: Uuid,
    pub outcome: String,
    pub object_id: Option<String>,
    /// The trace context stored with the event.
    pub traceparent: Option<String>,
    /// Time from the event's receipt to its outcome, by the database's clock.
    pub since_receipt: Option<Duration>,
}

impl Database {
    /// Claims up to `limit` due commands for `worker`, each first in line for its
    /// object and with no other command of its object running anywhere.
    ///
    /// The events a command serves are read by primary key from the ids listed in
    /// `command_events`. A join of the two tables would do too, but before the tables
    /// have statistics (a new database, a burst after start-up) it can be planned as a
    /// full scan of `events` for every claimed command.
    ///
    /// Bitmap scans are off for the claim, which must walk `commands_due` in order and
    /// stop at `limit`. On tables without statistics yet, the planner may instead
    /// collect every due command and sort them. That costs time in proportion to the
    /// backlog, just when a claim should be fast.
    pub async fn claim_due_commands(
        &self,
        limit: usize,
        lease: Duration,
        worker: &str,
    ) -> sqlx::Result<Vec<ClaimedCommand>> {
        let mut transaction = self.pool().begin().await?;
        sqlx::raw_sql("SET LOCAL enable_bitmapscan = off")
            .execute(&mut *transaction)
            .await?;
        let rows = sqlx::query(
            "WITH candidate AS ( \
                 SELECT c.id, c.object_key FROM commands c \
                 WHERE c.state = 'pending' AND c.next_attempt_at <= now() \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM commands earlier \
                       WHERE earlier.object_key = c.object_key \
                         AND earlier.state IN ('pending', 'running') \
                         AND (earlier.enqueue_time, earlier.id) < (c.enqueue_time, c.id)) \
                 ORDER BY c.next_attempt_at, c.id \
                 LIMIT $1 \
                 FOR UPDATE OF c SKIP LOCKED \
             ), leased AS ( \
                 INSERT INTO object_leases AS lease (object_key, command_id, lease_until, leased_by) \
                 SELECT DISTINCT ON (object_key) object_key, id, now() + $2 * interval '1 microsecond', $3 \
                 FROM candidate ORDER BY object_key, id \
                 ON CONFLICT (object_key) DO UPDATE \
                     SET command_id = EXCLUDED.command_id, lease_until = EXCLUDED.lease_until, \
                         leased_by = EXCLUDED.leased_by \
                     WHERE lease.lease_until < now() \
                 RETURNING command_id \
             ), claimed AS ( \
                 UPDATE commands c \
                 SET state = 'running', attempts = c.attempts + 1, \
                     lease_until = now() + $2 * interval '1 microsecond', leased_by = $3, updated_at = now() \
                 FROM leased WHERE c.id = leased.command_id \
                 RETURNING c.id, c.object_key, c.object_id, c.spec, c.attempts, c.idempotency_key, \
                           c.traceparent, c.tracestate \
             ), started AS ( \
                 INSERT INTO audit (step, command_id, object_id, attempt, trace_id, actor) \
                 SELECT 'attempt_started', id, object_id, attempts, \
                        NULLIF(split_part(traceparent, '-', 2), ''), $3 \
                 FROM claimed \
             ) \
             SELECT claimed.*, coalesce(served.event_ids, '{}') AS event_ids, \
                    coalesce(served.event_traceparents, '{}') AS event_traceparents \
             FROM claimed LEFT JOIN LATERAL ( \
                 SELECT array_agg(e.id ORDER BY e.enqueue_time, e.id) AS event_ids, \
                        array_agg(e.traceparent ORDER BY e.enqueue_time, e.id) AS event_traceparents \
                 FROM events e \
                 WHERE e.id = ANY (ARRAY(SELECT ce.event_id FROM command_events ce \
                                         WHERE ce.command_id = claimed.id)) \
             ) served ON true \
             ORDER BY id",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(micros(lease))
        .bind(worker)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;

        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let spec: Value = row.try_get("spec")?;
            let spec: CommandSpec = serde_json::from_value(spec)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
            claimed.push(ClaimedCommand {
                id: row.try_get("id")?,
                spec,
                object_key: row.try_get("object_key")?,
                attempt: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                idempotency_key: row.try_get("idempotency_key")?,
                traceparent: row.try_get("traceparent")?,
                tracestate: row.try_get("tracestate")?,
                event_ids: row.try_get("event_ids")?,
                event_traceparents: row.try_get("event_traceparents")?,
            });
        }
        Ok(claimed)
    }

    /// Records the results of finished attempts in one short transaction and settles
    /// the events whose commands are all done. Returns the events settled now.
    pub async fn record_attempts(
        &self,
        records: &[AttemptRecord],
        worker: &str,
    ) -> sqlx::Result<Vec<SettledEvent>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut transaction = self.pool().begin().await?;

        let ids: Vec<i64> = records.iter().map(|record| record.command.id).collect();
        let states: Vec<&str> = records.iter().map(|record| record.finish.state()).collect();
        let delays: Vec<i64> = records
            .iter()
            .map(|record| micros(record.finish.delay()))
            .collect();
        let park_reasons: Vec<Option<&str>> = records
            .iter()
            .map(|record| match record.finish {
                Finish::Parked { reason } => Some(reason),
                _ => None,
            })
            .collect();
        let statuses: Vec<Option<i32>> = records
            .iter()
            .map(|record| record.http_status.map(i32::from))
            .collect();
        let errors: Vec<Option<&str>> = records
            .iter()
            .map(|record| record.error.as_deref())
            .collect();
        let uncounted: Vec<i32> = records
            .iter()
            .map(|record| i32::from(matches!(record.finish, Finish::Deferred { .. })))
            .collect();
        let traceparents: Vec<Option<&str>> = records
            .iter()
            .map(|record| record.attempt_traceparent.as_deref())
            .collect();
        let tracestates: Vec<Option<&str>> = records
            .iter()
            .map(|record| record.attempt_tracestate.as_deref())
            .collect();

        lock_commands_in_order(&mut transaction, &ids).await?;
        let updated: Vec<i64> = sqlx::query_scalar(
            "UPDATE commands c \
             SET state = u.state, \
                 next_attempt_at = CASE WHEN u.state = 'pending' \
                                        THEN now() + u.delay * interval '1 microsecond' \
                                        ELSE c.next_attempt_at END, \
                 park_reason = u.park_reason, last_status = u.status, last_error = u.error, \
                 attempts = c.attempts - u.uncounted, \
                 lease_until = NULL, leased_by = NULL, updated_at = now(), \
                 finished_at = CASE WHEN u.state IN ('applied', 'parked') THEN now() END, \
                 traceparent = coalesce(c.traceparent, u.traceparent), \
                 tracestate = CASE WHEN c.traceparent IS NULL THEN u.tracestate ELSE c.tracestate END \
             FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::int4[], $6::text[], $7::int4[], \
                         $9::text[], $10::text[]) \
                  AS u(id, state, delay, park_reason, status, error, uncounted, traceparent, tracestate) \
             WHERE c.id = u.id AND c.state = 'running' AND c.leased_by = $8 \
             RETURNING c.id",
        )
        .bind(&ids)
        .bind(states)
        .bind(delays)
        .bind(park_reasons)
        .bind(statuses)
        .bind(errors)
        .bind(uncounted)
        .bind(worker)
        .bind(traceparents)
        .bind(tracestates)
        .fetch_all(&mut *transaction)
        .await?;

        let object_keys: Vec<&str> = records
            .iter()
            .map(|record| record.command.object_key.as_str())
            .collect();
        sqlx::query(
            "DELETE FROM object_leases l USING unnest($1::text[], $2::int8[]) AS u(object_key, command_id) \
             WHERE l.object_key = u.object_key AND l.command_id = u.command_id AND l.leased_by = $3",
        )
        .bind(object_keys)
        .bind(&ids)
        .bind(worker)
        .execute(&mut *transaction)
        .await?;

        let mut audit = attempt_audit_rows(records, &updated, worker);
        let held: Vec<&AttemptRecord> = records
            .iter()
            .filter(|record| updated.contains(&record.command.id))
            .collect();
        let mut superseded = continue_resolved(&mut transaction, &held, &mut audit).await?;
        let planned_children =
            plan_follow_ups(&mut transaction, &held, self.coalesce_window(), &mut audit).await?;
        superseded.extend(planned_children.superseded);
        insert_audit_rows(&mut *transaction, &audit).await?;

        let mut finished = updated.clone();
        finished.extend(&superseded);
        let settled = settle_events(&mut transaction, &finished).await?;
        if planned_children.planned
            || held
                .iter()
                .any(|record| matches!(record.finish, Finish::Continue { .. }))
        {
            notify_dispatchers(&mut transaction).await?;
        }
        transaction.commit().await?;
        Ok(settled)
    }

    /// Extends the leases of commands this worker is still running.
    pub async fn renew_leases(
        &self,
        ids: &[i64],
        lease: Duration,
        worker: &str,
    ) -> sqlx::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH locked AS ( \
                 SELECT id FROM commands WHERE id = ANY($1) AND state = 'running' AND leased_by = $3 \
                 ORDER BY id FOR UPDATE \
             ), renewed AS ( \
                 UPDATE commands c SET lease_until = now() + $2 * interval '1 microsecond' \
                 FROM locked WHERE c.id = locked.id \
                 RETURNING c.id, c.object_key) \
             UPDATE object_leases l SET lease_until = now() + $2 * interval '1 microsecond' \
             FROM renewed WHERE l.object_key = renewed.object_key AND l.command_id = renewed.id",
        )
        .bind(ids)
        .bind(micros(lease))
        .bind(worker)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Makes running commands whose lease ended due again, because the worker that
    /// held them stopped without recording a result. Returns how many there were.
    pub async fn release_expired_leases(&self) -> sqlx::Result<u64> {
        let released: Vec<i64> = sqlx::query_scalar(
            "WITH expired AS ( \
                 SELECT id, leased_by FROM commands \
                 WHERE state = 'running' AND lease_until < now() \
                 FOR UPDATE SKIP LOCKED \
             ), released AS ( \
                 UPDATE commands c \
                 SET state = 'pending', next_attempt_at = now(), lease_until = NULL, leased_by = NULL, \
                     updated_at = now() \
                 FROM expired WHERE c.id = expired.id \
                 RETURNING c.id, c.object_id, c.attempts, expired.leased_by, c.traceparent \
             ), audited AS ( \
                 INSERT INTO audit (step, command_id, object_id, attempt, trace_id, detail) \
                 SELECT 'lease_expired', id, object_id, attempts, NULLIF(split_part(traceparent, '-', 2), ''), \
                        jsonb_build_object('leasedBy', leased_by) \
                 FROM released \
             ) \
             SELECT id FROM released",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(released.len() as u64)
    }

    /// Puts commands this worker will not finish back in line at once, auditing each
    /// abandoned attempt.
    pub async fn abandon_commands(&self, ids: &[i64], worker: &str) -> sqlx::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH locked AS ( \
                 SELECT id FROM commands WHERE id = ANY($1) ORDER BY id FOR UPDATE \
             ), abandoned AS ( \
                 UPDATE commands c \
                 SET state = 'pending', next_attempt_at = now(), lease_until = NULL, leased_by = NULL, \
                     updated_at = now() \
                 FROM locked WHERE c.id = locked.id AND c.state = 'running' AND c.leased_by = $2 \
                 RETURNING c.id, c.object_key, c.object_id, c.attempts, c.traceparent \
             ), unleased AS ( \
                 DELETE FROM object_leases l USING abandoned \
                 WHERE l.object_key = abandoned.object_key AND l.command_id = abandoned.id \
             ) \
             INSERT INTO audit (step, command_id, object_id, attempt, trace_id, actor, detail) \
             SELECT 'attempt_abandoned', id, object_id, attempts, NULLIF(split_part(traceparent, '-', 2), ''), \
                    $2, jsonb_build_object('reason', 'the worker shut down before the attempt finished') \
             FROM abandoned",
        )
        .bind(ids)
        .bind(worker)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Returns how long until the next pending command is due by the database's clock,
    /// or `None` when nothing is pending.
    pub async fn next_due_in(&self) -> sqlx::Result<Option<Duration>> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 \
             FROM commands WHERE state = 'pending'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(seconds.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))))
    }
}

/// Locks command rows in id order. Every statement that updates several commands takes
/// its locks this way first, so two of them (recording outcomes, renewing leases) can
/// never wait on each other in a cycle.
async fn lock_commands_in_order(
    transaction: &mut sqlx::PgConnection,
    ids: &[i64],
) -> sqlx::Result<()> {
    sqlx::query("SELECT id FROM commands WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(&mut *transaction)
        .await?;
    Ok(())
}

/// Files commands that continue as another spec under their new object, and retires
/// what that makes stale. Returns the superseded command ids.
async fn continue_resolved(
    transaction: &mut sqlx::PgConnection,
    records: &[&AttemptRecord],
    audit: &mut Vec<AuditRow>,
) -> sqlx::Result<Vec<i64>> {
    let continued: Vec<(&AttemptRecord, &CommandSpec)> = records
        .iter()
        .filter_map(|record| match &record.finish {
            Finish::Continue { spec } => Some((*record, spec)),
            _ => None,
        })
        .collect();
    if continued.is_empty() {
        return Ok(Vec::new());
    }

    let keys: std::collections::BTreeSet<String> = continued
        .iter()
        .map(|(_, spec)| spec.object_key())
        .collect();
    lock_object_keys(transaction, &keys).await?;

    let ids: Vec<i64> = continued
        .iter()
        .map(|(record, _)| record.command.id)
        .collect();
    let kinds: Vec<&str> = continued.iter().map(|(_, spec)| spec.kind()).collect();
    let specs: Vec<Value> = continued
        .iter()
        .map(|(_, spec)| serde_json::to_value(spec).expect("a command spec serializes to JSON"))
        .collect();
    let object_keys: Vec<String> = continued
        .iter()
        .map(|(_, spec)| spec.object_key())
        .collect();
    let object_ids: Vec<&str> = continued.iter().map(|(_, spec)| spec.object_id()).collect();
    sqlx::query(
        "WITH refiled AS ( \
             UPDATE commands c SET kind = u.kind, spec = u.spec, object_key = u.object_key, object_id = u.object_id \
             FROM unnest($1::int8[], $2::text[], $3::jsonb[], $4::text[], $5::text[]) \
                  AS u(id, kind, spec, object_key, object_id) \
             WHERE c.id = u.id \
             RETURNING c.id, c.object_id) \
         UPDATE events e SET object_id = refiled.object_id \
         FROM command_events ce JOIN refiled ON refiled.id = ce.command_id \
         WHERE e.id = ce.event_id AND e.object_id IS NULL",
    )
    .bind(&ids)
    .bind(kinds)
    .bind(specs)
    .bind(&object_keys)
    .bind(object_ids)
    .execute(&mut *transaction)
    .await?;

    for (record, spec) in &continued {
        audit.push(
            AuditRow::new(Step::LinkResolved)
                .command(record.command.id)
                .object(Some(spec.object_id()))
                .trace(record.traceparent())
                .detail(serde_json::json!({ "spec": spec })),
        );
    }
    supersede_stale_link_commands(transaction, &object_keys, audit).await
}

/// Result of planning follow-up commands.
struct PlannedFollowUps {
    planned: bool,
    superseded: Vec<i64>,
}

/// Plans the synchronizations that applied listings found, each serving the events of
/// its listing.
async fn plan_follow_ups(
    transaction: &mut sqlx::PgConnection,
    records: &[&AttemptRecord],
    coalesce_window: Duration,
    audit: &mut Vec<AuditRow>,
) -> sqlx::Result<PlannedFollowUps> {
    let mut children = Vec::new();
    for record in records
        .iter()
        .filter(|record| record.finish == Finish::Applied)
    {
        let FollowUp::SynchronizeBuyers(buyers) = &record.follow_up else {
            continue;
        };
        let command = &record.command;
        let enqueue_time: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT enqueue_time FROM commands WHERE id = $1")
                .bind(command.id)
                .fetch_one(&mut *transaction)
                .await?;
        for buyer in buyers {
            let spec = CommandSpec::SynchronizeBuyer {
                buyer: buyer.clone(),
            };
            let name = format!("{}/{}", command.idempotency_key, buyer);
            children.push(NewCommand {
                idempotency_key: Uuid::new_v5(&command.idempotency_key, name.as_bytes()),
                spec,
                event_ids: command.event_ids.clone(),
                enqueue_time,
                traceparent: record.traceparent().map(str::to_owned),
                tracestate: if record.attempt_traceparent.is_some() {
                    record.attempt_tracestate.clone()
                } else {
                    command.tracestate.clone()
                },
                parent_id: Some(command.id),
            });
        }
    }
    let (planned, superseded) =
        plan_commands(transaction, &children, coalesce_window, audit).await?;
    Ok(PlannedFollowUps {
        planned: !planned.is_empty(),
        superseded,
    })
}

fn attempt_audit_rows(records: &[AttemptRecord], updated: &[i64], worker: &str) -> Vec<AuditRow> {
    let mut rows = Vec::with_capacity(records.len() * 2);
    for record in records {
        let command = &record.command;
        let lease_held = updated.contains(&command.id);

        let mut detail = record.detail.clone();
        if let Value::Object(map) = &mut detail {
            map.insert("result".into(), json!(record.finish.name()));
            if let Finish::Retry { delay } | Finish::Deferred { delay } = record.finish {
                map.insert("nextAttemptInMs".into(), json!(delay.as_millis() as u64));
            }
            if let Some(error) = &record.error {
                map.insert("error".into(), json!(error));
            }
            if !lease_held {
                map.insert("leaseLost".into(), json!(true));
            }
        }

        let mut finished = AuditRow::new(Step::AttemptFinished)
            .command(command.id)
            .object(Some(command.spec.object_id()))
            .trace(record.traceparent())
            .detail(detail);
        finished.attempt = i32::try_from(command.attempt).ok();
        finished.http_status = record.http_status.map(i32::from);
        finished.duration_ms = Some(record.duration.as_secs_f64() * 1000.0);
        finished.actor = Some(worker.to_owned());
        rows.push(finished);

        if !lease_held {
            continue;
        }
        let terminal = match record.finish {
            Finish::Applied => Some((Step::Applied, json!({}))),
            Finish::Parked { reason } => Some((
                Step::Parked,
                json!({ "reason": reason, "status": record.http_status, "error": record.error }),
            )),
            Finish::Retry { .. } | Finish::Deferred { .. } | Finish::Continue { .. } => None,
        };
        if let Some((step, detail)) = terminal {
            rows.push(
                AuditRow::new(step)
                    .command(command.id)
                    .object(Some(command.spec.object_id()))
                    .trace(record.traceparent())
                    .detail(detail),
            );
        }
    }
    rows
}

/// Gives an outcome to every event served by `finished` commands whose commands are
/// all done.
///
/// The event rows are locked first, so when two transactions finish the last two
/// commands of one event at the same time, the second one waits, then reads the first
/// one's commit in its next statement and settles the event.
pub(super) async fn settle_events(
    transaction: &mut sqlx::PgConnection,
    finished: &[i64],
) -> sqlx::Result<Vec<SettledEvent>> {
    if finished.is_empty() {
        return Ok(Vec::new());
    }

    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT e.id FROM events e \
         WHERE e.outcome IS NULL \
           AND e.id IN (SELECT event_id FROM command_events WHERE command_id = ANY($1)) \
         ORDER BY e.id FOR UPDATE",
    )
    .bind(finished)
    .fetch_all(&mut *transaction)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }

    let rows = sqlx::query(
        "WITH summary AS ( \
             SELECT ce.event_id, \
                    bool_or(c.state = 'parked') AS any_parked, \
                    bool_and(c.state = 'superseded') AS all_superseded, \
                    bool_and(c.state IN ('applied', 'parked', 'superseded')) AS all_done \
             FROM command_events ce JOIN commands c ON c.id = ce.command_id \
             WHERE ce.event_id = ANY($1) \
             GROUP BY ce.event_id \
         ), settled AS ( \
             UPDATE events e \
             SET outcome = CASE WHEN s.any_parked THEN 'parked' \
                                WHEN s.all_superseded THEN 'superseded' \
                                ELSE 'applied' END, \
                 settled_at = now() \
             FROM summary s \
             WHERE e.id = s.event_id AND s.all_done AND e.outcome IS NULL \
             RETURNING e.id, e.outcome, e.object_id, e.traceparent, \
                       EXTRACT(EPOCH FROM (now() - e.received_at))::float8 AS since_receipt \
         ), audited AS ( \
             INSERT INTO audit (step, event_id, object_id, trace_id) \
             SELECT outcome, id, object_id, NULLIF(split_part(traceparent, '-', 2), '') FROM settled \
         ) \
         SELECT id, outcome, object_id, traceparent, since_receipt FROM settled",
    )
    .bind(&locked)
    .fetch_all(&mut *transaction)
    .await?;

    rows.into_iter()
        .map(|row| {
            let since_receipt: Option<f64> = row.try_get("since_receipt")?;
            Ok(SettledEvent {
                id: row.try_get("id")?,
                outcome: row.try_get("outcome")?,
                object_id: row.try_get("object_id")?,
                traceparent: row.try_get("traceparent")?,
                since_receipt: since_receipt
                    .map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
            })
        })
        .collect()
}
