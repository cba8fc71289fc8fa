//! The environment of one fault test: private broker and database, the simulator in
//! process, a reconnecting producer, and `erp-sync` processes started on demand.

pub mod checks;
pub mod postgres;
pub mod producer;
pub mod proxy;
pub mod rabbit;
pub mod system;
pub mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use erp_sync::simulator::{self, BuyerCase, RunningSimulator, SimulatorConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

pub use checks::Resends;
pub use postgres::PrivateCluster;
pub use producer::Producer;
pub use proxy::TcpProxy;
pub use rabbit::{BrokerOptions, PrivateBroker};
pub use system::InstanceDir;
pub use worker::{WorkerLog, WorkerProcess};

/// Name of the worker's database on the private cluster.
pub const DATABASE: &str = "erp_sync";

/// Prefix of every Accounts API path.
pub const ACCOUNTS: &str = "/public/v1/accounts";

/// Settings a test may change before its services start.
#[derive(Default)]
pub struct Options {
    pub broker: BrokerOptions,
    /// Buyers in the simulator's data set; the default data set when `None`.
    pub buyers: Option<usize>,
}

/// The private services of one test and the worker processes it started.
pub struct FaultEnv {
    pub broker: PrivateBroker,
    pub cluster: PrivateCluster,
    pub simulator: RunningSimulator,
    pub producer: Arc<Producer>,
    /// The `ERP_SYNC_*` (and `RUST_LOG`) variables given to every worker started next.
    pub vars: BTreeMap<String, String>,
    dir: InstanceDir,
    logs: Mutex<Vec<PathBuf>>,
}

impl FaultEnv {
    /// Starts the services with default options.
    pub async fn start() -> FaultEnv {
        FaultEnv::start_with(Options::default()).await
    }

    /// Starts a broker, a database cluster with the migrated schema, and the simulator.
    pub async fn start_with(options: Options) -> FaultEnv {
        system::reap_orphaned_instances();
        let dir = InstanceDir::create("test");

        let (broker, cluster) = tokio::join!(
            PrivateBroker::start(&options.broker),
            PrivateCluster::start()
        );
        let mut simulator_config = SimulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..SimulatorConfig::default()
        };
        if let Some(buyers) = options.buyers {
            simulator_config.buyers = buyers;
        }
        let simulator = simulator::start(simulator_config)
            .await
            .expect("the simulator starts");

        let producer = Arc::new(Producer::new(&broker.url()));
        producer.declare_topology().await;

        let mut env = FaultEnv {
            broker,
            cluster,
            simulator,
            producer,
            vars: BTreeMap::new(),
            dir,
            logs: Mutex::new(Vec::new()),
        };
        env.vars = env.default_vars();
        env.migrate().await;
        env
    }

    /// Returns the worker settings of the fault tests: the private services, JSON logs,
    /// and delays scaled down so a fault and its recovery take seconds, not minutes.
    fn default_vars(&self) -> BTreeMap<String, String> {
        [
            ("ERP_SYNC_AMQP_URL", self.broker.url()),
            ("ERP_SYNC_DATABASE_URL", self.cluster.url(DATABASE)),
            ("ERP_SYNC_PLATFORM_URL", self.simulator.base_url()),
            ("ERP_SYNC_LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info,erp_sync=debug".to_owned()),
            ("ERP_SYNC_AMQP_HEARTBEAT", "5s".to_owned()),
            ("ERP_SYNC_AMQP_RECONNECT_MIN_DELAY", "200ms".to_owned()),
            ("ERP_SYNC_AMQP_RECONNECT_MAX_DELAY", "2s".to_owned()),
            ("ERP_SYNC_AMQP_OPERATION_TIMEOUT", "5s".to_owned()),
            ("ERP_SYNC_DATABASE_ACQUIRE_TIMEOUT", "5s".to_owned()),
            ("ERP_SYNC_DISPATCH_LEASE", "6s".to_owned()),
            ("ERP_SYNC_DISPATCH_POLL_INTERVAL", "250ms".to_owned()),
            ("ERP_SYNC_DISPATCH_SHUTDOWN_GRACE", "5s".to_owned()),
            ("ERP_SYNC_RETRY_INITIAL_DELAY", "200ms".to_owned()),
            ("ERP_SYNC_RETRY_MAX_DELAY", "5s".to_owned()),
            // Several workers run at once; each takes a free port for its endpoints.
            ("ERP_SYNC_TELEMETRY_LISTEN", "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Sets a worker variable for the workers started from now on.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.insert(name.to_owned(), value.into());
    }

    fn var_list(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// Creates and migrates the worker's database with `erp-sync migrate`.
    async fn migrate(&self) {
        let mut migrate = self.spawn(&["migrate"], "migrate", &self.var_list());
        let status = migrate.wait_exit(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "erp-sync migrate failed: {status}\n{}",
            migrate.log_tail(40)
        );
    }

    /// Starts `erp-sync run` with the current variables.
    pub fn spawn_worker(&self) -> WorkerProcess {
        self.spawn(&["run"], "worker", &self.var_list())
    }

    /// Starts `erp-sync run` with the current variables and extra ones.
    pub fn spawn_worker_with(&self, extra: &[(&str, String)]) -> WorkerProcess {
        let mut vars = self.var_list();
        vars.extend(
            extra
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone())),
        );
        self.spawn(&["run"], "worker", &vars)
    }

    /// Starts a worker and waits until it consumes the work queue.
    pub async fn start_worker(&self) -> WorkerProcess {
        let worker = self.spawn_worker();
        worker
            .wait_for_log("the worker consuming", Duration::from_secs(30), |line| {
                line.is("INFO", "consuming events")
            })
            .await;
        worker
    }

    fn spawn(&self, args: &[&str], role: &str, vars: &[(String, String)]) -> WorkerProcess {
        let mut logs = self.logs.lock().unwrap();
        let path = self
            .dir
            .path()
            .join(format!("{role}-{}.log", logs.len() + 1));
        logs.push(path.clone());
        WorkerProcess::spawn(args, vars, path)
    }

    /// Opens a connection pool to the worker's database at `url`.
    pub async fn connect_to(url: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
    }

    /// Opens a connection pool to the worker's database on the private cluster.
    pub async fn db(&self) -> sqlx::PgPool {
        FaultEnv::connect_to(&self.cluster.url(DATABASE)).await
    }

    /// Makes the simulator wait a random time between `min` and `max` before every
    /// response, so calls overlap and are in flight when a fault hits.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        self.simulator
            .control()
            .update_behaviour(|behaviour| {
                behaviour.latency = Some(erp_sync::simulator::Latency::Uniform { min, max });
            })
            .expect("the latency is valid");
    }

    /// Returns the first `count` active buyers of the data set, in id order.
    pub fn active_buyers(&self, count: usize) -> Vec<String> {
        let data = self.simulator.control().data();
        let buyers: Vec<String> = data
            .find_buyers(BuyerCase::Active)
            .take(count)
            .map(|buyer| buyer.id.clone())
            .collect();
        assert_eq!(
            buyers.len(),
            count,
            "the data set has {count} active buyers"
        );
        buyers
    }

    /// Builds one `updated` event per buyer.
    pub fn buyer_events(&self, buyers: &[String]) -> Vec<Value> {
        buyers
            .iter()
            .map(|buyer| envelope("Buyer", buyer, "updated", None))
            .collect()
    }

    /// Publishes `events` in a background task, one every `interval`, so they arrive
    /// while the test injects a fault.
    pub fn publish_stream(
        &self,
        events: Vec<Value>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let producer = self.producer.clone();
        tokio::spawn(async move {
            for event in events {
                producer.publish(&event).await;
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Waits until every event has an outcome and no command is pending or running.
    pub async fn wait_until_settled(&self, events: &[Value], limit: Duration) {
        wait_until_settled_at(&self.cluster.url(DATABASE), events, limit).await;
    }

    /// Returns the POST requests the simulator received on paths matching `glob`.
    pub fn posts(&self, glob: &str) -> Vec<erp_sync::simulator::LoggedRequest> {
        self.simulator
            .control()
            .find_requests(&erp_sync::simulator::RequestFilter::path(glob).with_method("POST"))
    }
}

impl Drop for FaultEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The test failed: show the end of every log before the directory goes.
        for path in self.logs.lock().unwrap().iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(40);
            eprintln!(
                "---- {} (last {} lines)\n{}",
                path.display(),
                lines.len() - start,
                lines[start..].join("\n")
            );
        }
    }
}

/// Waits until every event has an outcome and no command is pending or running, on the
/// database at `url`.
pub async fn wait_until_settled_at(url: &str, events: &[Value], limit: Duration) {
    let pool = FaultEnv::connect_to(url).await;
    let ids: Vec<Uuid> = events.iter().map(id_of).collect();
    let expected = ids.len() as i64;
    let mut last = (0, 0);
    let waited = wait_for(
        limit,
        || {
            let pool = pool.clone();
            let ids = ids.clone();
            async move {
                let settled: Result<(i64, i64), _> = sqlx::query_as(
                "SELECT (SELECT count(*) FROM events WHERE id = ANY($1) AND outcome IS NOT NULL), \
                        (SELECT count(*) FROM commands WHERE state IN ('pending', 'running'))",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await;
                settled.ok()
            }
        },
        |&(settled, open)| {
            last = (settled, open);
            settled == expected && open == 0
        },
    )
    .await;
    assert!(
        waited,
        "after {limit:?}, {} of {expected} events are settled and {} commands are pending or running",
        last.0, last.1
    );
    pool.close().await;
}

/// Polls `probe` every 100 ms until `done` accepts its value; returns false after
/// `limit`. A probe that returns `None` (a service that is down) counts as not done.
pub async fn wait_for<T, F, Fut>(
    limit: Duration,
    mut probe: F,
    mut done: impl FnMut(&T) -> bool,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await
            && done(&value)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `condition` holds, failing the test with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = wait_for(
        limit,
        || {
            let checked = condition();
            async move { Some(checked.await) }
        },
        |held| *held,
    )
    .await;
    assert!(held, "timed out after {limit:?} waiting until {what}");
}

/// Builds an envelope of the event contract about one object, enqueued now.
pub fn envelope(
    object_type: &str,
    object_id: &str,
    event_type: &str,
    data: Option<Value>,
) -> Value {
    let mut envelope = json!({
        "id": Uuid::new_v4().to_string(),
        "object": { "id": object_id, "objectType": object_type, "name": "Fault test object" },
        "details": { "eventType": event_type, "enqueueTime": chrono::Utc::now().to_rfc3339() },
    });
    if let Some(data) = data {
        envelope["data"] = data;
    }
    envelope
}

/// Returns the envelope id as a UUID.
pub fn id_of(envelope: &Value) -> Uuid {
    Uuid::parse_str(envelope["id"].as_str().expect("the envelope has an id"))
        .expect("the envelope id is a UUID")
}
