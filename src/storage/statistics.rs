//! Planner statistics for a new database.
//!
//! Until a table has been analyzed once, PostgreSQL guesses how many rows a lookup
//! matches, and for `event_id = ANY($1)` it guesses a third of the table. Plans built
//! on such guesses scan whole tables where an index lookup would do, so every batch
//! costs time in proportion to the tables. Autovacuum analyzes them only after its
//! next round (a minute by default) and a share of changes, long after a backlog
//! started to drain into a new database. One `ANALYZE` is enough: it records that
//! ids are distinct, and estimates then follow the tables as they grow.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Database;

/// The tables whose lookups the worker runs in every batch.
const HOT_TABLES: &[&str] = &[
    "events",
    "commands",
    "command_events",
    "object_leases",
    "audit",
];

/// Rows a never-analyzed table needs before it is analyzed, so that the statistics
/// describe real data.
const MIN_ROWS: i64 = 1_000;

/// Pause between two checks of the tables.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Database {
    /// Analyzes the worker's tables that have never been analyzed, are not in
    /// `analyzed`, and hold at least `MIN_ROWS` rows, adding them to `analyzed`.
    /// Returns how many tables still wait for their first analysis.
    pub async fn analyze_new_tables(&self, analyzed: &mut HashSet<String>) -> sqlx::Result<usize> {
        // `reltuples` is -1 until the first ANALYZE or VACUUM. Unlike the activity
        // counters of pg_stat_user_tables, it survives a copy of the database.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.relname::text, coalesce(s.n_live_tup, 0) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
             WHERE n.nspname = current_schema() AND c.relname = ANY($1) AND c.reltuples < 0",
        )
        .bind(HOT_TABLES)
        .fetch_all(self.pool())
        .await?;

        let mut waiting = 0;
        for (table, live_rows) in rows {
            if analyzed.contains(&table) {
                continue;
            }
            if live_rows < MIN_ROWS {
                waiting += 1;
                continue;
            }
            // The name comes from HOT_TABLES, never from input. A role that does not
            // own the table gets a warning from PostgreSQL and no statistics, and the
            // table is not tried again.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE \"{table}\"")))
                .execute(self.pool())
                .await?;
            info!(
                table,
                rows = live_rows,
                "analyzed a new table for the query planner"
            );
            analyzed.insert(table);
        }
        Ok(waiting)
    }
}

/// Analyzes each new table once it holds data, checking every second until none is
/// left or `stop` is cancelled. On a database in use the first check finds nothing to
/// do and the task ends.
pub async fn keep_statistics(database: Database, stop: CancellationToken) {
    let mut analyzed = HashSet::new();
    loop {
        // Shutdown does not wait for a check, which may be waiting for a connection.
        let checked = tokio::select! {
            checked = database.analyze_new_tables(&mut analyzed) => checked,
            _ = stop.cancelled() => return,
        };
        match checked {
            Ok(0) => {
                debug!("every table has planner statistics");
                return;
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "cannot analyze the new tables; autovacuum will do it later");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
    }
}
