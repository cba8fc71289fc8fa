//! A whole erp-sync pipeline per test: a fresh database, queue names of its own, the
//! simulator on a free port, and the worker running in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use erp_sync::broker::{BrokerLink, OutboundMessage, PublishOutcome, Publisher};
use erp_sync::config::Config;
use erp_sync::health::Readiness;
use erp_sync::simulator::{self, DataSet, RunningSimulator, SimulatorConfig};
use erp_sync::storage::{Database, OutcomeCounts};
use erp_sync::worker::Worker;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// PostgreSQL server of the tests; each test creates its own database on it.
pub const DATABASE_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// RabbitMQ of the tests; each test declares its own exchanges and queues on it.
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Longest wait for a condition in a test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A running pipeline.
pub struct TestEnv {
    pub name: String,
    pub config: Config,
    pub database: Database,
    pub simulator: RunningSimulator,
    link: BrokerLink,
    publisher: Publisher,
    inspector: lapin::Connection,
    readiness: Arc<Readiness>,
    /// Where the last started worker serves `/healthz`, `/readyz` and `/metrics`.
    health_address: Option<SocketAddr>,
    /// Workers started by the test, each with its own consumer and dispatcher.
    workers: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

/// Settings a test changes before the pipeline starts.
pub struct Setup {
    pub config: Config,
    pub simulator: SimulatorConfig,
    /// Whether the worker starts with the pipeline.
    pub start_worker: bool,
}

impl TestEnv {
    /// Starts a pipeline with the default settings, scaled for tests.
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// Starts a pipeline after `adjust` changed its settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Setup)) -> TestEnv {
        let name = format!("erp_sync_test_{}", Uuid::new_v4().simple());
        let mut setup = Setup {
            config: test_config(&name),
            simulator: SimulatorConfig::default(),
            start_worker: true,
        };
        setup.simulator.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut setup);

        let simulator = simulator::start(setup.simulator.clone())
            .await
            .expect("simulator starts");
        setup.config.platform.url = simulator.base_url();

        Database::migrate(&setup.config.database)
            .await
            .expect("test database is created and migrated");
        let database = Database::connect(&setup.config.database)
            .await
            .expect("test database accepts connections");

        let link = BrokerLink::connect(&setup.config.amqp)
            .await
            .expect("RabbitMQ accepts connections");
        link.declare_topology().await.expect("topology is declared");
        let publisher = link.publisher().await.expect("publisher channel opens");

        let inspector =
            lapin::Connection::connect(BROKER_URL, lapin::ConnectionProperties::default())
                .await
                .expect("RabbitMQ accepts connections");

        let mut env = TestEnv {
            name,
            config: setup.config,
            database,
            simulator,
            link,
            publisher,
            inspector,
            readiness: Arc::new(Readiness::new()),
            health_address: None,
            workers: Vec::new(),
        };
        if setup.start_worker {
            env.start_worker().await;
        }
        env
    }

    /// Starts a worker in-process; a test may start several, which share the database
    /// and the queue like separate processes would.
    pub async fn start_worker(&mut self) {
        let worker = Worker::prepare(self.config.clone())
            .await
            .expect("worker prepares");
        let readiness = worker.readiness.clone();
        self.readiness = readiness.clone();
        self.health_address = worker.health_address;
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        wait_until("the worker consumes", || {
            let readiness = readiness.clone();
            async move { readiness.is_consuming() }
        })
        .await;
        self.workers.push((token, handle));
    }

    /// The requests the simulator received on paths matching a glob, oldest first.
    pub fn calls(&self, path_glob: impl Into<String>) -> Vec<erp_sync::simulator::LoggedRequest> {
        self.simulator
            .control()
            .find_requests(&erp_sync::simulator::RequestFilter::path(path_glob))
    }

    /// Reads the simulator's data set, for picking ids of a given kind.
    pub fn pick<T>(&self, choose: impl FnOnce(&DataSet) -> T) -> T {
        choose(&self.simulator.control().data())
    }

    /// The readiness of the running worker.
    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Returns the URL of a path on the last started worker's health and metrics
    /// listener.
    pub fn health_url(&self, path: &str) -> String {
        let address = self
            .health_address
            .expect("the worker serves the health endpoints");
        format!("http://{address}{path}")
    }

    /// Whether the last started worker has a consumer on the work queue.
    pub fn worker_is_consuming(&self) -> bool {
        !self.workers.is_empty() && self.readiness.is_consuming()
    }

    /// Stops every worker and returns how the last one ended.
    pub async fn stop_worker(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            result = tokio::time::timeout(WAIT_LIMIT, handle)
                .await
                .expect("the worker stops in time")
                .expect("the worker task ends");
        }
        result
    }

    /// Publishes an envelope with the routing key the contract derives from it.
    pub async fn publish(&self, envelope: &Value) {
        let object = envelope
            .pointer("/object/objectType")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        let event_type = envelope
            .pointer("/details/eventType")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let routing_key = erp_sync::event::routing_key_for(object, event_type)
            .unwrap_or_else(|| format!("accounts.other.{event_type}"));
        self.publish_raw(envelope.to_string().as_bytes(), &routing_key)
            .await;
    }

    /// Publishes envelopes with confirms outstanding at once, so a large batch reaches
    /// the queue in a fraction of a second.
    pub async fn publish_all(&self, envelopes: &[Value]) {
        let lines: Vec<u8> = envelopes
            .iter()
            .flat_map(|envelope| {
                let mut line = envelope.to_string().into_bytes();
                line.push(b'\n');
                line
            })
            .collect();
        let prepared = erp_sync::publish::prepare_lines(&lines, None);
        let report =
            erp_sync::publish::publish_lines(&self.publisher, &self.config.amqp.exchange, prepared)
                .await
                .expect("publish");
        assert!(
            report.is_complete(),
            "every envelope was routed: {report:?}"
        );
        assert_eq!(report.published, envelopes.len());
    }

    /// Publishes any body with a routing key.
    pub async fn publish_raw(&self, body: &[u8], routing_key: &str) {
        self.publish_message(OutboundMessage {
            routing_key: routing_key.to_owned(),
            body: body.to_vec(),
            ..OutboundMessage::default()
        })
        .await;
    }

    /// Publishes a prepared message and checks that the broker routed it.
    pub async fn publish_message(&self, message: OutboundMessage) {
        let outcome = self
            .publisher
            .publish_event(&self.config.amqp.exchange, &message)
            .await
            .expect("publish");
        assert_eq!(
            outcome,
            PublishOutcome::Confirmed,
            "the broker routed the message"
        );
    }

    /// Waits until `deliveries` deliveries have an outcome and no event is unsettled.
    pub async fn wait_until_settled(&self, deliveries: i64) -> OutcomeCounts {
        let database = self.database.clone();
        wait_until(&format!("{deliveries} deliveries settle"), || {
            let database = database.clone();
            async move {
                let counts = database.outcome_counts().await.expect("outcome counts");
                counts.settled() >= deliveries && counts.unsettled == 0
            }
        })
        .await;
        self.database
            .outcome_counts()
            .await
            .expect("outcome counts")
    }

    /// The audit steps of an event and of the commands that serve it, in order.
    pub async fn audit_steps_of_event(&self, event_id: Uuid) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT step FROM audit \
             WHERE event_id = $1 OR command_id IN (SELECT command_id FROM command_events WHERE event_id = $1) \
             ORDER BY id",
        )
        .bind(event_id)
        .fetch_all(self.database.pool())
        .await
        .expect("audit query")
    }

    /// The outcome of an event, if it is settled.
    pub async fn outcome_of(&self, event_id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT outcome FROM events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(self.database.pool())
            .await
            .expect("outcome query")
            .flatten()
    }

    /// The park reason of the single command of an event.
    pub async fn park_reason_of(&self, event_id: Uuid) -> Option<String> {
        sqlx::query_scalar(
            "SELECT c.park_reason FROM commands c JOIN command_events ce ON ce.command_id = c.id WHERE ce.event_id = $1",
        )
        .bind(event_id)
        .fetch_one(self.database.pool())
        .await
        .expect("park reason query")
    }

    /// The dead letters recorded in PostgreSQL: (reason, size, sha256), oldest first.
    pub async fn recorded_dead_letters(&self) -> Vec<(String, i32, String)> {
        sqlx::query("SELECT reason, size_bytes, sha256 FROM dead_letters ORDER BY id")
            .fetch_all(self.database.pool())
            .await
            .expect("dead letters query")
            .into_iter()
            .map(|row| (row.get("reason"), row.get("size_bytes"), row.get("sha256")))
            .collect()
    }

    /// Takes every message from the dead-letter queue: (reason header, body).
    pub async fn drain_dead_letter_queue(&self) -> Vec<(Option<String>, Vec<u8>)> {
        let channel = self.link_channel().await;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.config.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get")
        {
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| {
                    headers
                        .inner()
                        .get(erp_sync::broker::REASON_HEADER)
                        .cloned()
                })
                .and_then(|value| match value {
                    lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
                    _ => None,
                });
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            messages.push((reason, message.delivery.data.clone()));
        }
        messages
    }

    async fn link_channel(&self) -> lapin::Channel {
        self.inspector
            .create_channel()
            .await
            .expect("channel opens")
    }

    /// Stops the worker, checks that nothing is left unsettled, and removes the test's
    /// database, queues and exchanges.
    pub async fn finish(mut self) {
        if !self.workers.is_empty() {
            self.stop_worker().await.expect("the worker stops cleanly");
        }
        let counts = self
            .database
            .outcome_counts()
            .await
            .expect("outcome counts");
        assert_eq!(counts.unsettled, 0, "events left unsettled: {counts:?}");
        self.cleanup().await;
    }

    /// Removes the test's database, queues and exchanges without further checks.
    pub async fn cleanup(self) {
        self.database.close().await;
        let channel = self.link_channel().await;
        let amqp = &self.config.amqp;
        for queue in [&amqp.queue, &amqp.dead_letter_queue] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [&amqp.exchange, &amqp.dead_letter_exchange] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = channel.close(200, "cleaned up".into()).await;
        let _ = self.inspector.close(200, "cleaned up".into()).await;
        self.link.close().await;
        drop_database(&self.name).await;
        self.simulator.shutdown().await;
    }
}

/// The default configuration pointed at the test's own database and queues, with the
/// retry schedule shortened.
pub fn test_config(name: &str) -> Config {
    let mut config = Config::defaults();
    config.database.url = erp_sync::config::Secret::new(format!("{DATABASE_SERVER}/{name}"));
    config.amqp.url = erp_sync::config::Secret::new(BROKER_URL);
    let prefix = name.replace('_', "-");
    config.amqp.exchange = format!("{prefix}.events-exchange");
    config.amqp.queue = format!("{prefix}.events");
    config.amqp.dead_letter_exchange = format!("{prefix}.dead-exchange");
    config.amqp.dead_letter_queue = format!("{prefix}.dead");
    config.retry.initial_delay = Duration::from_millis(200);
    config.dispatch.poll_interval = Duration::from_millis(200);
    config.dispatch.shutdown_grace = Duration::from_secs(5);
    // Tests run side by side, so each listener takes a free port.
    config.telemetry.listen = "127.0.0.1:0".to_owned();
    config
}

async fn drop_database(name: &str) {
    let Ok(pool) = sqlx::PgPool::connect(&format!("{DATABASE_SERVER}/postgres")).await else {
        return;
    };
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
    pool.close().await;
}

/// Sends a GET request and returns the status code and the body, failing the test
/// when no response comes within a few seconds.
pub async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url} failed: {error}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Polls `condition` every 50 ms until it holds, failing the test after [`WAIT_LIMIT`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An envelope of the event contract.
pub fn envelope(
    object_type: &str,
    object_id: Option<&str>,
    event_type: &str,
    data: Option<Value>,
) -> Value {
    let mut object = json!({ "objectType": object_type, "name": "Test object" });
    if let Some(id) = object_id {
        object["id"] = json!(id);
    }
    let mut envelope = json!({
        "id": Uuid::new_v4().to_string(),
        "object": object,
        "details": { "eventType": event_type, "enqueueTime": chrono::Utc::now().to_rfc3339() },
    });
    if let Some(data) = data {
        envelope["data"] = data;
    }
    envelope
}

/// The envelope id as a UUID.
pub fn id_of(envelope: &Value) -> Uuid {
    Uuid::parse_str(envelope["id"].as_str().expect("envelope has an id"))
        .expect("envelope id is a UUID")
}
