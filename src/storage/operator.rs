//! Operator reads and repairs: the status summary, the audit timeline of an id,
//! replays of parked commands and the recorded dead letters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row as _;
use uuid::Uuid;

use super::audit::{AuditRow, Step, insert_audit_rows};
use super::commands::SettledEvent;
use super::planning::{lock_object_keys, supersede_stale_link_commands};
use super::{Database, notify_dispatchers};
use crate::plan::{CommandSpec, SET_ERP_LINK_STATUS};

/// Counts an operator checks first.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Commands by state, every state listed.
    pub commands: Vec<(String, i64)>,
    /// Pending commands whose next attempt time has passed.
    pub due: i64,
    /// How long the oldest due command has been waiting, in seconds.
    pub oldest_due_age_seconds: Option<f64>,
    /// Parked commands by park reason.
    pub parked: Vec<(String, i64)>,
    /// Events with a pending or running command.
    pub unsettled_events: i64,
    /// Dead letters recorded and not yet published again.
    pub dead_letters_waiting: i64,
    /// Dead letters recorded in all.
    pub dead_letters_recorded: i64,
}

/// One row of an audit timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineRow {
    pub at: DateTime<Utc>,
    pub step: String,
    pub event_id: Option<Uuid>,
    pub command_id: Option<i64>,
    pub dead_letter_id: Option<i64>,
    pub object_id: Option<String>,
    pub attempt: Option<i32>,
    pub http_status: Option<i32>,
    pub duration_ms: Option<f64>,
    pub actor: Option<String>,
    pub trace_id: Option<String>,
    pub detail: Option<Value>,
}

/// Selection of parked commands; every given selector must match.
#[derive(Debug, Clone, Default)]
pub struct ParkedSelector {
    pub command_ids: Vec<i64>,
    pub event_ids: Vec<Uuid>,
    pub object_ids: Vec<String>,
    pub park_reason: Option<String>,
}

impl ParkedSelector {
    pub fn is_empty(&self) -> bool {
        self.command_ids.is_empty()
            && self.event_ids.is_empty()
            && self.object_ids.is_empty()
            && self.park_reason.is_none()
    }
}

/// A parked command with what an operator needs to decide on a replay.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedCommand {
    pub id: i64,
    pub spec: CommandSpec,
    pub park_reason: Option<String>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub attempts: i32,
    pub idempotency_key: Uuid,
    pub event_ids: Vec<Uuid>,
    pub parked_at: Option<DateTime<Utc>>,
    /// The calls of the last finished attempt, as the audit trail recorded them.
    pub last_calls: Option<Value>,
}

/// Result of a replay for one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum ReplayResult {
    /// Back in line, due now.
    Replayed { command_id: i64 },
    /// Not replayed: a newer event about the same ERP link decides instead.
    Superseded { command_id: i64 },
    /// Not parked any more (an operator or worker changed it meanwhile).
    NotParked { command_id: i64 },
}

/// A recorded dead letter.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub detail: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub event_id: Option<Uuid>,
    pub size_bytes: i32,
    pub sha256: String,
    pub republish_count: i32,
    pub republished_at: Option<DateTime<Utc>>,
    /// The body, when it was within the size limit.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

/// Selection of dead letters to list or publish again; every given selector must match.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSelector {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
    /// Only those not published again yet.
    pub waiting_only: bool,
    pub limit: Option<i64>,
}

/// The command states, in the order reports list them.
pub const COMMAND_STATES: [&str; 5] = ["pending", "running", "applied", "parked", "superseded"];

impl Database {
    /// Counts commands by state, due work, parked work and dead letters.
    pub async fn status_report(&self) -> sqlx::Result<StatusReport> {
        let rows = sqlx::query("SELECT state, count(*) AS count FROM commands GROUP BY state")
            .fetch_all(self.pool())
            .await?;
        let mut commands: Vec<(String, i64)> = COMMAND_STATES
            .iter()
            .map(|state| (state.to_string(), 0))
            .collect();
        for row in rows {
            let state: String = row.try_get("state")?;
            let count: i64 = row.try_get("count")?;
            match commands.iter_mut().find(|(known, _)| *known == state) {
                Some(entry) => entry.1 = count,
                None => commands.push((state, count)),
            }
        }

        let due = sqlx::query(
            "SELECT count(*) AS due, EXTRACT(EPOCH FROM (now() - min(next_attempt_at)))::float8 AS oldest \
             FROM commands WHERE state = 'pending' AND next_attempt_at <= now()",
        )
        .fetch_one(self.pool())
        .await?;

        let parked: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(park_reason, 'unknown'), count(*) FROM commands WHERE state = 'parked' \
             GROUP BY park_reason ORDER BY 2 DESC, 1",
        )
        .fetch_all(self.pool())
        .await?;

        let counts = sqlx::query(
            "SELECT (SELECT count(*) FROM events WHERE outcome IS NULL) AS unsettled, \
                    (SELECT count(*) FROM dead_letters WHERE republished_at IS NULL) AS waiting, \
                    (SELECT count(*) FROM dead_letters) AS recorded",
        )
        .fetch_one(self.pool())
        .await?;

        Ok(StatusReport {
            commands,
            due: due.try_get("due")?,
            oldest_due_age_seconds: due.try_get("oldest")?,
            parked,
            unsettled_events: counts.try_get("unsettled")?,
            dead_letters_waiting: counts.try_get("waiting")?,
            dead_letters_recorded: counts.try_get("recorded")?,
        })
    }

    /// Every audit row about an id, oldest first. The id may be an event id (a UUID),
    /// a command id (a number) or a platform object id; the timeline then includes the
    /// commands of the events, and the events of the commands.
    pub async fn timeline(&self, id: &str) -> sqlx::Result<Vec<TimelineRow>> {
        let id = id.trim();
        let query = if let Ok(event_id) = Uuid::parse_str(id) {
            sqlx::query(
                "SELECT * FROM audit WHERE event_id = $1 \
                    OR command_id IN (SELECT command_id FROM command_events WHERE event_id = $1) \
                    OR dead_letter_id IN (SELECT id FROM dead_letters WHERE event_id = $1) \
                 ORDER BY at, id",
            )
            .bind(event_id)
        } else if let Ok(command_id) = id.parse::<i64>() {
            sqlx::query(
                "SELECT * FROM audit WHERE command_id = $1 \
                    OR event_id IN (SELECT event_id FROM command_events WHERE command_id = $1) \
                 ORDER BY at, id",
            )
            .bind(command_id)
        } else {
            sqlx::query(
                "SELECT * FROM audit WHERE object_id = $1 \
                    OR event_id IN (SELECT id FROM events WHERE object_id = $1) \
                    OR command_id IN (SELECT id FROM commands WHERE object_id = $1) \
                 ORDER BY at, id",
            )
            .bind(id.to_owned())
        };

        let rows = query.fetch_all(self.pool()).await?;
        rows.into_iter()
            .map(|row| {
                Ok(TimelineRow {
                    at: row.try_get("at")?,
                    step: row.try_get("step")?,
                    event_id: row.try_get("event_id")?,
                    command_id: row.try_get("command_id")?,
                    dead_letter_id: row.try_get("dead_letter_id")?,
                    object_id: row.try_get("object_id")?,
                    attempt: row.try_get("attempt")?,
                    http_status: row.try_get("http_status")?,
                    duration_ms: row.try_get("duration_ms")?,
                    actor: row.try_get("actor")?,
                    trace_id: row.try_get("trace_id")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Reads the parked commands a selector picks, oldest first.
    pub async fn parked_commands(
        &self,
        selector: &ParkedSelector,
    ) -> sqlx::Result<Vec<ParkedCommand>> {
        let rows = sqlx::query(
            "SELECT c.id, c.spec, c.park_reason, c.last_status, c.last_error, c.attempts, c.idempotency_key, \
                    c.finished_at, \
                    ARRAY(SELECT event_id FROM command_events WHERE command_id = c.id) AS event_ids, \
                    (SELECT a.detail -> 'calls' FROM audit a \
                     WHERE a.command_id = c.id AND a.step = 'attempt_finished' \
                     ORDER BY a.id DESC LIMIT 1) AS last_calls \
             FROM commands c \
             WHERE c.state = 'parked' \
               AND (cardinality($1::int8[]) = 0 OR c.id = ANY($1)) \
               AND (cardinality($2::uuid[]) = 0 \
                    OR c.id IN (SELECT command_id FROM command_events WHERE event_id = ANY($2))) \
               AND (cardinality($3::text[]) = 0 OR c.object_id = ANY($3)) \
               AND ($4::text IS NULL OR c.park_reason = $4) \
             ORDER BY c.id",
        )
        .bind(&selector.command_ids)
        .bind(&selector.event_ids)
        .bind(&selector.object_ids)
        .bind(selector.park_reason.as_deref())
        .fetch_all(self.pool())
        .await?;

        rows.into_iter()
            .map(|row| {
                let spec: Value = row.try_get("spec")?;
                Ok(ParkedCommand {
                    id: row.try_get("id")?,
                    spec: serde_json::from_value(spec)
                        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
                    park_reason: row.try_get("park_reason")?,
                    last_status: row.try_get("last_status")?,
                    last_error: row.try_get("last_error")?,
                    attempts: row.try_get("attempts")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    event_ids: row.try_get("event_ids")?,
                    parked_at: row.try_get("finished_at")?,
                    last_calls: row.try_get("last_calls")?,
                })
            })
            .collect()
    }

    /// Puts parked commands back in line, due now, with a fresh retry budget. Their
    /// events become unsettled until the commands finish again. A link command that a
    /// newer event about the same link has made stale is superseded instead. Every
    /// command gets an audit row naming `actor` and `reason`.
    pub async fn replay_commands(
        &self,
        ids: &[i64],
        actor: &str,
        reason: &str,
    ) -> sqlx::Result<(Vec<ReplayResult>, Vec<SettledEvent>)> {
        let mut transaction = self.pool().begin().await?;

        let rows =
            sqlx::query("SELECT id, kind, object_key FROM commands WHERE id = ANY($1) ORDER BY id")
                .bind(ids)
                .fetch_all(&mut *transaction)
                .await?;
        let link_keys: std::collections::BTreeSet<String> = rows
            .iter()
            .filter(|row| row.get::<String, _>("kind") == SET_ERP_LINK_STATUS)
            .map(|row| row.get::<String, _>("object_key"))
            .collect();
        lock_object_keys(&mut transaction, &link_keys).await?;

        let replayed_rows: Vec<(i64, Option<String>)> = sqlx::query_as(
            "WITH replayed AS ( \
                 UPDATE commands SET state = 'pending', attempts = 0, next_attempt_at = now(), park_reason = NULL, \
                        finished_at = NULL, updated_at = now() \
                 WHERE id = ANY($1) AND state = 'parked' \
                 RETURNING id, traceparent) \
             , reopened AS ( \
                 UPDATE events SET outcome = NULL, settled_at = NULL \
                 WHERE id IN (SELECT event_id FROM command_events WHERE command_id IN (SELECT id FROM replayed)) \
             ) \
             SELECT id, traceparent FROM replayed ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&mut *transaction)
        .await?;

        let mut audit = Vec::new();
        for (id, traceparent) in &replayed_rows {
            let mut row = AuditRow::new(Step::Replayed)
                .command(*id)
                .trace(traceparent.as_deref())
                .detail(json!({ "reason": reason }));
            row.actor = Some(actor.to_owned());
            audit.push(row);
        }
        let replayed: Vec<i64> = replayed_rows.iter().map(|(id, _)| *id).collect();
        let keys: Vec<String> = link_keys.into_iter().collect();
        let superseded = supersede_stale_link_commands(&mut transaction, &keys, &mut audit).await?;
        insert_audit_rows(&mut *transaction, &audit).await?;
        let settled = super::commands::settle_events(&mut transaction, &superseded).await?;
        if !replayed.is_empty() {
            notify_dispatchers(&mut transaction).await?;
        }
        transaction.commit().await?;

        let results = ids
            .iter()
            .map(|id| {
                if superseded.contains(id) {
                    ReplayResult::Superseded { command_id: *id }
                } else if replayed.contains(id) {
                    ReplayResult::Replayed { command_id: *id }
                } else {
                    ReplayResult::NotParked { command_id: *id }
                }
            })
            .collect();
        Ok((results, settled))
    }

    /// Reads the dead letters a selector picks, oldest first.
    pub async fn dead_letters(
        &self,
        selector: &DeadLetterSelector,
    ) -> sqlx::Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT * FROM dead_letters \
             WHERE (cardinality($1::int8[]) = 0 OR id = ANY($1)) \
               AND ($2::text IS NULL OR reason = $2) \
               AND (NOT $3 OR republished_at IS NULL) \
             ORDER BY id LIMIT $4",
        )
        .bind(&selector.ids)
        .bind(selector.reason.as_deref())
        .bind(selector.waiting_only)
        .bind(selector.limit.unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;

        rows.into_iter()
            .map(|row| {
                Ok(DeadLetter {
                    id: row.try_get("id")?,
                    received_at: row.try_get("received_at")?,
                    reason: row.try_get("reason")?,
                    detail: row.try_get("detail")?,
                    routing_key: row.try_get("routing_key")?,
                    message_id: row.try_get("message_id")?,
                    event_id: row.try_get("event_id")?,
                    size_bytes: row.try_get("size_bytes")?,
                    sha256: row.try_get("sha256")?,
                    republish_count: row.try_get("republish_count")?,
                    republished_at: row.try_get("republished_at")?,
                    body: row.try_get("body")?,
                })
            })
            .collect()
    }

    /// Records that a dead letter was published to the exchange again.
    pub async fn record_republished(
        &self,
        id: i64,
        exchange: &str,
        actor: &str,
        reason: &str,
    ) -> sqlx::Result<()> {
        let mut transaction = self.pool().begin().await?;
        sqlx::query(
            "UPDATE dead_letters SET republished_at = now(), republish_count = republish_count + 1 WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        let mut row = AuditRow::new(Step::Republished)
            .detail(json!({ "reason": reason, "exchange": exchange }));
        row.dead_letter_id = Some(id);
        row.actor = Some(actor.to_owned());
        insert_audit_rows(&mut *transaction, &[row]).await?;
        transaction.commit().await
    }
}
