//! The daemon: ingest and dispatch side by side until shutdown, with the endpoints
//! for probes and scraping and the gauges of open work beside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, redact_url};
use crate::dispatch::Dispatcher;
use crate::health::{self, Readiness};
use crate::ingest::run_ingest;
use crate::platform::PlatformClient;
use crate::retry::RetryPolicy;
use crate::storage::{Database, keep_statistics};
use crate::telemetry::metrics::{ObservedWorker, OpenWorkSnapshot, metrics};

/// How long the health listener may take to close its connections at the end.
const HEALTH_SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// How many gauge intervals the counts of open work stay reported without a refresh.
const GAUGE_INTERVALS_KEPT: u32 = 3;

/// A running worker's handles, for the demo and tests that run it in-process.
pub struct Worker {
    pub config: Arc<Config>,
    pub database: Database,
    pub readiness: Arc<Readiness>,
    pub worker_id: String,
    /// The address of `/healthz`, `/readyz` and `/metrics`, when `telemetry.listen`
    /// is set. With port 0 it contains the port chosen.
    pub health_address: Option<SocketAddr>,
    health_listener: Option<TcpListener>,
}

impl Worker {
    /// Connects to the database, checks its schema, and opens the health listener, so
    /// that an address in use fails start-up instead of going unnoticed.
    pub async fn prepare(config: Config) -> anyhow::Result<Worker> {
        let database = Database::connect_checked(&config.database)
            .await?
            .with_coalesce_window(config.dispatch.coalesce_window);
        let health_listener = match config.telemetry.listen_address() {
            Some(address) => Some(health::bind(address).await?),
            None => None,
        };
        let health_address = health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        Ok(Worker {
            config: Arc::new(config),
            database,
            readiness: Arc::new(Readiness::new()),
            worker_id: worker_id(),
            health_address,
            health_listener,
        })
    }

    /// Consumes and dispatches until `shutdown` is cancelled, or until one side fails
    /// for good, which stops the other side too. The health endpoints respond until
    /// both sides have stopped.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        let health_stop = CancellationToken::new();
        let health = self.serve_health(&health_stop);
        let gauges = self.start_gauges(&stop);
        let statistics = tokio::spawn(keep_statistics(self.database.clone(), stop.clone()));
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
        let _ = gauges.await;
        let _ = statistics.await;
        self.database.close().await;
        health_stop.cancel();
        if let Some(mut health) = health
            && tokio::time::timeout(HEALTH_SHUTDOWN_LIMIT, &mut health)
                .await
                .is_err()
        {
            health.abort();
        }
        info!("erp-sync worker stopped");
        ingested.and(dispatched)
    }

    /// Starts serving the health and metrics endpoints, when a listener is open.
    fn serve_health(&mut self, stop: &CancellationToken) -> Option<JoinHandle<()>> {
        let listener = self.health_listener.take()?;
        info!(
            address = %self.health_address.map(|address| address.to_string()).unwrap_or_default(),
            "serving /healthz, /readyz and /metrics"
        );
        let readiness = self.readiness.clone();
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            if let Err(error) = health::serve(listener, readiness, stop).await {
                warn!(%error, "the health and metrics listener failed");
            }
        }))
    }

    /// Makes the gauges report this worker and refreshes its counts of open work
    /// every `telemetry.gauge_interval` until `stop`.
    fn start_gauges(&self, stop: &CancellationToken) -> JoinHandle<()> {
        let interval = self.config.telemetry.gauge_interval;
        let snapshot = Arc::new(OpenWorkSnapshot::new(interval * GAUGE_INTERVALS_KEPT));
        metrics().observe_worker(ObservedWorker {
            readiness: self.readiness.clone(),
            database: self.database.clone(),
            open_work: snapshot.clone(),
        });
        tokio::spawn(refresh_open_work(
            self.database.clone(),
            snapshot,
            interval,
            stop.clone(),
        ))
    }
}

/// Counts the open work every `interval` until `stop`, logging once per outage of
/// the database.
async fn refresh_open_work(
    database: Database,
    snapshot: Arc<OpenWorkSnapshot>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        match database.open_work().await {
            Ok(work) => {
                snapshot.update(work);
                failing = false;
            }
            Err(error) => {
                if !failing {
                    warn!(%error, "cannot count the open work for the gauges; retrying");
                }
                failing = true;
            }
        }
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
