//! The append-only audit trail: one row per step of an event, a command or a dead
//! letter, written in the same transaction as the change it records.

use serde_json::Value;
use sqlx::{Executor, Postgres};
use uuid::Uuid;

/// A step recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A new event was stored.
    Received,
    /// A delivery repeated an event id already received; nothing new was planned.
    Duplicate,
    /// A valid event that asks for no platform call.
    Ignored,
    /// A message that could not become an event was dead-lettered.
    DeadLettered,
    /// A command was planned for an event.
    CommandPlanned,
    /// An event joined a pending command that already serves other events.
    Coalesced,
    /// A command was retired because a newer event about its object decides instead;
    /// or an event whose commands were all retired so.
    Superseded,
    /// An ERP link known by its buyer and seller was found; the command continues on it.
    LinkResolved,
    /// A worker claimed a command and started an attempt.
    AttemptStarted,
    /// An attempt ended; the row carries the HTTP status, the duration and the calls.
    AttemptFinished,
    /// A worker's lease on a running command ended before it recorded a result.
    LeaseExpired,
    /// A worker stopped before its attempt finished and put the command back in line.
    AttemptAbandoned,
    /// An operator put a parked command back in line.
    Replayed,
    /// An operator published a dead letter to the exchange again.
    Republished,
    /// A command, or an event whose commands all succeeded, was applied.
    Applied,
    /// A command failed for good, or an event has a parked command.
    Parked,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Received => "received",
            Step::Duplicate => "duplicate",
            Step::Ignored => "ignored",
            Step::DeadLettered => "dead_lettered",
            Step::CommandPlanned => "command_planned",
            Step::Coalesced => "coalesced",
            Step::Superseded => "superseded",
            Step::LinkResolved => "link_resolved",
            Step::AttemptStarted => "attempt_started",
            Step::AttemptFinished => "attempt_finished",
            Step::LeaseExpired => "lease_expired",
            Step::AttemptAbandoned => "attempt_abandoned",
            Step::Replayed => "replayed",
            Step::Republished => "republished",
            Step::Applied => "applied",
            Step::Parked => "parked",
        }
    }
}

/// One audit row before it is written.
#[derive(Debug, Clone, Default)]
pub struct AuditRow {
    pub step: Option<Step>,
    pub event_id: Option<Uuid>,
    pub command_id: Option<i64>,
    pub dead_letter_id: Option<i64>,
    pub object_id: Option<String>,
    pub attempt: Option<i32>,
    pub http_status: Option<i32>,
    pub duration_ms: Option<f64>,
    pub detail: Option<Value>,
    pub trace_id: Option<String>,
    pub actor: Option<String>,
}

impl AuditRow {
    pub fn new(step: Step) -> AuditRow {
        AuditRow {
            step: Some(step),
            ..AuditRow::default()
        }
    }

    pub fn event(mut self, event_id: Uuid) -> Self {
        self.event_id = Some(event_id);
        self
    }

    pub fn command(mut self, command_id: i64) -> Self {
        self.command_id = Some(command_id);
        self
    }

    pub fn object(mut self, object_id: Option<&str>) -> Self {
        self.object_id = object_id.map(str::to_owned);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn trace(mut self, traceparent: Option<&str>) -> Self {
        self.trace_id = traceparent.and_then(trace_id_of);
        self
    }
}

/// Extracts the trace id from a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| trace_id.to_ascii_lowercase())
}

/// Appends rows to the audit trail in one statement.
pub async fn insert_audit_rows<'e, E>(executor: E, rows: &[AuditRow]) -> sqlx::Result<()>
where
    E: Executor<'e, Database = Postgres>,
{
    if rows.is_empty() {
        return Ok(());
    }

    let mut steps = Vec::with_capacity(rows.len());
    let mut event_ids = Vec::with_capacity(rows.len());
    let mut command_ids = Vec::with_capacity(rows.len());
    let mut dead_letter_ids = Vec::with_capacity(rows.len());
    let mut object_ids = Vec::with_capacity(rows.len());
    let mut attempts = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut durations = Vec::with_capacity(rows.len());
    let mut details = Vec::with_capacity(rows.len());
    let mut trace_ids = Vec::with_capacity(rows.len());
    let mut actors = Vec::with_capacity(rows.len());
    for row in rows {
        steps.push(row.step.map(Step::as_str).unwrap_or("unknown"));
        event_ids.push(row.event_id);
        command_ids.push(row.command_id);
        dead_letter_ids.push(row.dead_letter_id);
        object_ids.push(row.object_id.as_deref());
        attempts.push(row.attempt);
        statuses.push(row.http_status);
        durations.push(row.duration_ms);
        details.push(row.detail.clone());
        trace_ids.push(row.trace_id.as_deref());
        actors.push(row.actor.as_deref());
    }

    sqlx::query(
        "INSERT INTO audit (step, event_id, command_id, dead_letter_id, object_id, attempt, \
                            http_status, duration_ms, detail, trace_id, actor) \
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[], $4::int8[], $5::text[], \
                              $6::int4[], $7::int4[], $8::float8[], $9::jsonb[], $10::text[], $11::text[])",
    )
    .bind(steps)
    .bind(event_ids)
    .bind(command_ids)
    .bind(dead_letter_ids)
    .bind(object_ids)
    .bind(attempts)
    .bind(statuses)
    .bind(durations)
    .bind(details)
    .bind(trace_ids)
    .bind(actors)
    .execute(executor)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_traceparent() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(traceparent).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
