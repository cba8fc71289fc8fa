//! Planner statistics that keep up with the outbox.
//!
//! The worker's lookups go through partial indexes of open work (`commands_due`,
//! `commands_open_by_object`, `events_unsettled`). The statistics may estimate that no
//! command is pending, because the table was never analyzed or was last analyzed when
//! all its commands were applied. The planner then takes those indexes for empty, and
//! every claim and every recording reads all of them or hashes all open commands. A backlog then drains at a rate that falls as it grows. With its
//! default settings autovacuum analyzes a table once a tenth of its rows have changed
//! and looks at each database once a minute. On a table with millions of settled
//! commands that is long after the backlog arrived.
//!
//! So the worker analyzes its open-work tables itself, once a small share of their
//! rows has changed since the last analysis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Database;

/// The tables whose open rows the claims and recordings look up.
const OPEN_WORK_TABLES: &[&str] = &["events", "commands", "command_events", "object_leases"];

/// Changed rows after which a table is analyzed again, on top of `CHANGED_SHARE`.
const CHANGED_ROWS: f64 = 1_000.0;

/// Share of a table's rows that, once changed, makes it due for analysis.
const CHANGED_SHARE: f64 = 0.01;

/// Shortest time between two analyses of one table.
const MIN_ANALYZE_INTERVAL: Duration = Duration::from_secs(10);

/// Pause between two checks of the tables.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Database {
    /// Analyzes the open-work tables on which enough rows changed since their last
    /// analysis, skipping those analyzed by this worker within `MIN_ANALYZE_INTERVAL`
    /// (listed in `last_analyzed`). Returns the tables analyzed.
    pub async fn analyze_changed_tables(
        &self,
        last_analyzed: &mut HashMap<String, Instant>,
    ) -> sqlx::Result<Vec<String>> {
        // `reltuples` is -1 until the first analysis, and `n_mod_since_analyze`
        // counts the rows inserted, updated and deleted since the last one.
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE n.nspname = current_schema() AND c.relname = ANY($1) \
               AND s.n_mod_since_analyze >= $2 + $3 * greatest(c.reltuples, 0)",
        )
        .bind(OPEN_WORK_TABLES)
        .bind(CHANGED_ROWS)
        .bind(CHANGED_SHARE)
        .fetch_all(self.pool())
        .await?;

        let mut analyzed = Vec::new();
        for table in due {
            if last_analyzed
                .get(&table)
                .is_some_and(|at| at.elapsed() < MIN_ANALYZE_INTERVAL)
            {
                continue;
            }
            // The name comes from OPEN_WORK_TABLES, never from input. A role that does
            // not own the table gets a warning from PostgreSQL and no statistics, and
            // the interval keeps it from trying more often.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE \"{table}\"")))
                .execute(self.pool())
                .await?;
            last_analyzed.insert(table.clone(), Instant::now());
            analyzed.push(table);
        }
        Ok(analyzed)
    }
}

/// Checks the open-work tables every second and analyzes those that changed enough,
/// until `stop`.
pub async fn keep_statistics(database: Database, stop: CancellationToken) {
    let mut last_analyzed = HashMap::new();
    let mut failing = false;
    loop {
        // Shutdown does not wait for a check, which may be waiting for a connection.
        let checked = tokio::select! {
            checked = database.analyze_changed_tables(&mut last_analyzed) => checked,
            _ = stop.cancelled() => return,
        };
        match checked {
            Ok(analyzed) => {
                failing = false;
                if !analyzed.is_empty() {
                    debug!(tables = ?analyzed, "analyzed tables for the query planner");
                }
            }
            Err(error) => {
                if !failing {
                    warn!(%error, "cannot analyze the outbox tables; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
    }
}
