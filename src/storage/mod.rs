//! PostgreSQL: the only module that contains SQL.
//!
//! Every transaction here is short and never spans a platform call: ingest stores a
//! batch of deliveries, the dispatcher claims commands in one statement and records
//! their outcomes in a second, separate transaction.

mod audit;
mod commands;
mod ingest;
mod operator;
mod planning;
mod report;
mod statistics;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use audit::{AuditRow, Step, trace_id_of};
pub use commands::{AttemptRecord, ClaimedCommand, Finish, FollowUp, SettledEvent};
pub use ingest::{IngestItem, IngestResult, RejectedMessage, StoredBatch, StoredEvent};
pub use operator::{
    COMMAND_STATES, DeadLetter, DeadLetterSelector, ParkedCommand, ParkedSelector, ReplayResult,
    StatusReport, TimelineRow,
};
pub use planning::{NewCommand, PlannedCommand};
pub use report::{OpenWork, OutcomeCounts, SettlementProgress};
pub use statistics::keep_statistics;

use crate::config::DatabaseConfig;

/// Migrations compiled into the binary from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Channel notified when new commands become due, so idle dispatchers wake at once.
pub const COMMANDS_CHANNEL: &str = "erp_sync_commands";

/// Connections of the pool, for the `db.client.connection.*` metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub idle: u32,
    pub used: u32,
    /// The maximum number of connections of the pool.
    pub max: u32,
}

/// A database whose schema is not what this binary needs.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database {database} does not exist; run `erp-sync migrate` to create it")]
    MissingDatabase { database: String },
    #[error(
        "the database schema is not migrated ({missing} of {total} migrations missing); run `erp-sync migrate`"
    )]
    NotMigrated { missing: usize, total: usize },
    #[error(
        "the database has migration {version} that this erp-sync does not know; it was migrated by a newer version"
    )]
    UnknownMigration { version: i64 },
    #[error("migration {version} was changed after it was applied; restore the original file")]
    ChangedMigration { version: i64 },
}

/// The pool of connections to erp-sync's database.
#[derive(Clone, Debug)]
pub struct Database {
    pool: PgPool,
    /// Connections opened before this moment are replaced instead of handed out,
    /// because an error showed that the server they lead to restarted or became
    /// read-only.
    stale_before: Arc<Mutex<Option<Instant>>>,
    /// Delay before the first call of a new synchronization, so later events join it.
    coalesce_window: Duration,
}

impl Database {
    /// Opens a pool with the configured size, timeouts and server-side limits.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Database> {
        let options = connect_options(config)?;
        let stale_before: Arc<Mutex<Option<Instant>>> = Arc::default();
        let mark = stale_before.clone();
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.acquire_timeout)
            // A connection that failed (a restarted server, a failover) is tested
            // before it is handed out again, so a dead one is replaced instead of used.
            .test_before_acquire(true)
            .before_acquire(move |_connection, metadata| {
                let keep = match *mark.lock().expect("stale mark lock") {
                    Some(mark) => metadata.age < mark.elapsed(),
                    None => true,
                };
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(options)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {}",
                    crate::config::redact_url(config.url.expose())
                )
            })?;
        Ok(Database {
            pool,
            stale_before,
            coalesce_window: Duration::ZERO,
        })
    }

    /// Creates the database when it does not exist and applies every migration.
    pub async fn migrate(config: &DatabaseConfig) -> anyhow::Result<()> {
        let url = config.url.expose();
        let exists = Postgres::database_exists(url).await.with_context(|| {
            format!(
                "cannot reach PostgreSQL at {}",
                crate::config::redact_url(url)
            )
        })?;
        if !exists {
            Postgres::create_database(url)
                .await
                .context("cannot create the database")?;
            tracing::info!(database = %database_name(url), "created the database");
        }

        let database = Database::connect(config).await?;
        MIGRATOR
            .run(&database.pool)
            .await
            .context("cannot apply the migrations")?;
        tracing::info!(
            migrations = MIGRATOR.iter().count(),
            "the schema is up to date"
        );
        database.pool.close().await;
        Ok(())
    }

    /// Drops the database with everything in it, then creates and migrates it anew.
    pub async fn recreate(config: &DatabaseConfig) -> anyhow::Result<()> {
        let url = config.url.expose();
        if Postgres::database_exists(url).await? {
            Postgres::force_drop_database(url)
                .await
                .context("cannot drop the database")?;
        }
        Database::migrate(config).await
    }

    /// Connects and checks that every migration of this binary is applied unchanged.
    pub async fn connect_checked(config: &DatabaseConfig) -> anyhow::Result<Database> {
        let url = config.url.expose();
        let exists = Postgres::database_exists(url).await.with_context(|| {
            format!(
                "cannot reach PostgreSQL at {}",
                crate::config::redact_url(url)
            )
        })?;
        if !exists {
            return Err(SchemaError::MissingDatabase {
                database: database_name(url),
            }
            .into());
        }
        let database = Database::connect(config).await?;
        database.check_schema().await?;
        Ok(database)
    }

    async fn check_schema(&self) -> anyhow::Result<()> {
        let table_exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let total = MIGRATOR.iter().count();
        if !table_exists {
            return Err(SchemaError::NotMigrated {
                missing: total,
                total,
            }
            .into());
        }

        let applied: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        for (version, checksum) in &applied {
            match MIGRATOR
                .iter()
                .find(|migration| migration.version == *version)
            {
                None => return Err(SchemaError::UnknownMigration { version: *version }.into()),
                Some(migration) if migration.checksum.as_ref() != checksum.as_slice() => {
                    return Err(SchemaError::ChangedMigration { version: *version }.into());
                }
                Some(_) => {}
            }
        }
        let missing = MIGRATOR
            .iter()
            .filter(|migration| {
                !applied
                    .iter()
                    .any(|(version, _)| *version == migration.version)
            })
            .count();
        if missing > 0 {
            return Err(SchemaError::NotMigrated { missing, total }.into());
        }
        Ok(())
    }

    /// Subscribes to [`COMMANDS_CHANNEL`] on a dedicated connection.
    pub async fn listen_for_commands(&self) -> anyhow::Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(COMMANDS_CHANNEL).await?;
        Ok(listener)
    }

    /// Checks whether the database accepts a query, for readiness checks.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Replaces every pooled connection after an error that shows the server restarted,
    /// went away or became read-only (a failover left it as a standby), because such a
    /// connection fails every statement while looking healthy. Returns whether it did.
    pub fn discard_connections_after(&self, error: &sqlx::Error) -> bool {
        if !poisons_connections(error) {
            return false;
        }
        *self.stale_before.lock().expect("stale mark lock") = Some(Instant::now());
        tracing::warn!(%error, "replacing the pooled database connections");
        true
    }

    /// Makes new synchronizations wait `window` before their first call.
    pub fn with_coalesce_window(mut self, window: Duration) -> Database {
        self.coalesce_window = window;
        self
    }

    pub(crate) fn coalesce_window(&self) -> Duration {
        self.coalesce_window
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Counts the pool's connections by whether they are in use; reads only the
    /// pool's own counters.
    pub fn pool_usage(&self) -> PoolUsage {
        let open = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle())
            .unwrap_or(u32::MAX)
            .min(open);
        PoolUsage {
            idle,
            used: open - idle,
            max: self.pool.options().get_max_connections(),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Wakes idle dispatchers of every worker when the transaction commits.
pub(crate) async fn notify_dispatchers(transaction: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(COMMANDS_CHANNEL)
        .execute(&mut *transaction)
        .await?;
    Ok(())
}

/// Whether an error means the connection's server restarted, is unreachable or only
/// accepts reads: SQLSTATE class 08 (connection exception), 57P01 to 57P03 (admin
/// shutdown, crash shutdown, cannot connect now) and 25006 (read-only transaction).
pub fn poisons_connections(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
        }),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Builds the connection settings: the URL, the time limits, and custom plans.
///
/// Every statement is planned for the table sizes at the time it runs
/// (`plan_cache_mode = force_custom_plan`). A cached generic plan is made once per
/// connection, often while the tables are still small. A plan that suits a small
/// table, such as scanning every pending command to find a few objects, makes each
/// batch slower as the tables grow. Planning the largest statement, the claim, took
/// 1 to 2 ms when measured, and the others take less.
fn connect_options(config: &DatabaseConfig) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(config.url.expose()).with_context(|| {
        format!(
            "invalid database.url {}",
            crate::config::redact_url(config.url.expose())
        )
    })?;
    Ok(options.application_name("erp-sync").options([
        ("statement_timeout", millis(config.statement_timeout)),
        (
            "idle_in_transaction_session_timeout",
            millis(config.idle_in_transaction_timeout),
        ),
        ("plan_cache_mode", "force_custom_plan".to_owned()),
    ]))
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|url| url.path().trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// Converts a delay to whole microseconds, the unit the SQL multiplies
/// `interval '1 microsecond'` by.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
