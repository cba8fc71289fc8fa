//! Read-only summaries of what happened to the deliveries, for the demo, tests and
//! operators.

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
}
