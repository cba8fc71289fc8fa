//! The daemon: ingest and dispatch side by side until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, redact_url};
use crate::dispatch::Dispatcher;
use crate::health::Readiness;
use crate::ingest::run_ingest;
use crate::platform::PlatformClient;
use crate::retry::RetryPolicy;
use crate::storage::Database;

/// A running worker's handles, for the demo and tests that run it in-process.
pub struct Worker {
    pub config: Arc<Config>,
    pub database: Database,
    pub readiness: Arc<Readiness>,
    pub worker_id: String,
}

impl Worker {
    /// Connects to the database, checks its schema and prepares the platform client.
    pub async fn prepare(config: Config) -> anyhow::Result<Worker> {
        let database = Database::connect_checked(&config.database)
            .await?
            .with_coalesce_window(config.dispatch.coalesce_window);
        Ok(Worker {
            config: Arc::new(config),
            database,
            readiness: Arc::new(Readiness::new()),
            worker_id: worker_id(),
        })
    }

    /// Consumes and dispatches until `shutdown` is cancelled, or until one side fails
    /// for good, which stops the other side too.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config.clone();
        let client = PlatformClient::new(&config.platform).context("invalid platform settings")?;
        info!(
            worker = %self.worker_id,
            platform = %config.platform.url,
            broker = %redact_url(config.amqp.url.expose()),
            queue = %config.amqp.queue,
            "erp-sync worker starting"
        );

        let stop = shutdown.child_token();
        let ingest = tokio::spawn({
            let stop = stop.clone();
            let config = config.clone();
            let database = self.database.clone();
            let readiness = self.readiness.clone();
            let worker_id = self.worker_id.clone();
            async move {
                let result = run_ingest(config, database, readiness, worker_id, stop.clone()).await;
                // A consumer that gave up stops dispatch as well, so the process exits.
                stop.cancel();
                result
            }
        });

        let dispatcher = Dispatcher {
            database: self.database.clone(),
            client,
            policy: RetryPolicy::new(&config.retry),
            config: config.dispatch.clone(),
            worker_id: self.worker_id.clone(),
            readiness: self.readiness.clone(),
        };
        let dispatched = dispatcher.run(stop.clone()).await;
        stop.cancel();

        let ingested = ingest.await.context("the consumer task panicked")?;
        self.database.close().await;
        info!("erp-sync worker stopped");
        ingested.and(dispatched)
    }
}

/// A name for this process in leases and audit rows: host, process id and a random
/// suffix, so two workers on one host stay distinct after a restart too.
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "erp-sync".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}
