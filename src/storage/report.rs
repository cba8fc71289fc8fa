//! Read-only summaries of what happened to the deliveries, for the demo, tests and
//! operators.

use std::time::Duration;

use sqlx::Row as _;

use super::Database;

/// Deliveries by outcome. Every delivery counts once: a new event by its event's
/// outcome (or as unsettled), a repeated id as a duplicate, bad input as a dead letter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub applied: i64,
    pub ignored: i64,
    pub duplicate: i64,
    pub superseded: i64,
    pub parked: i64,
    pub dead_lettered: i64,
    /// Events received whose commands are still pending or running.
    pub unsettled: i64,
}

impl OutcomeCounts {
    /// Deliveries the worker has stored, settled or not.
    pub fn deliveries(&self) -> i64 {
        self.settled() + self.unsettled
    }

    /// Deliveries that reached their outcome.
    pub fn settled(&self) -> i64 {
        self.applied
            + self.ignored
            + self.duplicate
            + self.superseded
            + self.parked
            + self.dead_lettered
    }

    /// The outcomes with their contract names, in a fixed order.
    pub fn named(&self) -> [(&'static str, i64); 6] {
        [
            ("applied", self.applied),
            ("ignored", self.ignored),
            ("duplicate", self.duplicate),
            ("superseded", self.superseded),
            ("parked", self.parked),
            ("dead_lettered", self.dead_lettered),
        ]
    }
}

/// The open work, counted for the gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenWork {
    pub pending: u64,
    /// Pending commands whose next attempt time has passed.
    pub due: u64,
    pub running: u64,
    /// How long the oldest due command has waited past its next attempt time.
    pub oldest_due_age: Option<Duration>,
    /// Parked commands by park reason.
    pub parked: Vec<(String, u64)>,
    /// Events with a pending or running command.
    pub unsettled_events: u64,
}

impl OpenWork {
    /// Parked commands of every reason.
    pub fn parked_total(&self) -> u64 {
        self.parked.iter().map(|(_, count)| count).sum()
    }
}

/// How far processing has come: the outcome counts plus the platform calls made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettlementProgress {
    pub outcomes: OutcomeCounts,
    /// Attempts that finished, retries included.
    pub attempts: i64,
}

impl Database {
    /// Counts deliveries by outcome.
    pub async fn outcome_counts(&self) -> sqlx::Result<OutcomeCounts> {
        let row = sqlx::query(
            "SELECT \
                 count(*) FILTER (WHERE outcome = 'applied') AS applied, \
                 count(*) FILTER (WHERE outcome = 'ignored') AS ignored, \
                 count(*) FILTER (WHERE outcome = 'superseded') AS superseded, \
                 count(*) FILTER (WHERE outcome = 'parked') AS parked, \
                 count(*) FILTER (WHERE outcome IS NULL) AS unsettled, \
                 (SELECT count(*) FROM audit WHERE step = 'duplicate') AS duplicate, \
                 (SELECT count(*) FROM dead_letters) AS dead_lettered \
             FROM events",
        )
        .fetch_one(self.pool())
        .await?;

        Ok(OutcomeCounts {
            applied: row.try_get("applied")?,
            ignored: row.try_get("ignored")?,
            duplicate: row.try_get("duplicate")?,
            superseded: row.try_get("superseded")?,
            parked: row.try_get("parked")?,
            dead_lettered: row.try_get("dead_lettered")?,
            unsettled: row.try_get("unsettled")?,
        })
    }

    /// Counts deliveries by outcome and the attempts made so far.
    pub async fn settlement_progress(&self) -> sqlx::Result<SettlementProgress> {
        let outcomes = self.outcome_counts().await?;
        let attempts: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit WHERE step = 'attempt_finished'")
                .fetch_one(self.pool())
                .await?;
        Ok(SettlementProgress { outcomes, attempts })
    }

    /// Counts the open work. Every count reads only the rows of an open state through
    /// the partial indexes on them (`commands_due`, `commands_running`,
    /// `commands_parked`, `events_unsettled`), so the cost follows the open work, not
    /// the size of the tables.
    pub async fn open_work(&self) -> sqlx::Result<OpenWork> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM commands WHERE state = 'pending') AS pending, \
                    (SELECT count(*) FROM commands \
                     WHERE state = 'pending' AND next_attempt_at <= now()) AS due, \
                    (SELECT EXTRACT(EPOCH FROM (now() - min(next_attempt_at)))::float8 FROM commands \
                     WHERE state = 'pending' AND next_attempt_at <= now()) AS oldest_due, \
                    (SELECT count(*) FROM commands WHERE state = 'running') AS running, \
                    (SELECT count(*) FROM events WHERE outcome IS NULL) AS unsettled",
        )
        .fetch_one(self.pool())
        .await?;
        let parked: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT park_reason, count(*) FROM commands WHERE state = 'parked' \
             GROUP BY park_reason ORDER BY park_reason",
        )
        .fetch_all(self.pool())
        .await?;

        let count = |name: &str| -> sqlx::Result<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        let oldest_due: Option<f64> = row.try_get("oldest_due")?;
        Ok(OpenWork {
            pending: count("pending")?,
            due: count("due")?,
            running: count("running")?,
            oldest_due_age: oldest_due.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
            parked: parked
                .into_iter()
                .map(|(reason, count)| {
                    (
                        reason.unwrap_or_else(|| "unknown".to_owned()),
                        u64::try_from(count).unwrap_or(0),
                    )
                })
                .collect(),
            unsettled_events: count("unsettled")?,
        })
    }
}
