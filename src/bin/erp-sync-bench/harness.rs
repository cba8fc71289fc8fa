//! The benchmark's services and processes: its own database and queues on the local
//! PostgreSQL and RabbitMQ, the simulator and the worker as child processes, event
//! bodies, preloading, progress polling and memory sampling.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use erp_sync::broker::{BrokerLink, OutboundMessage, PublishOutcome, Publisher};
use erp_sync::config::{Config, Secret};
use erp_sync::simulator::{BuyerCase, DEFAULT_SEED, generator};
use erp_sync::storage::Database;
use futures::StreamExt as _;
use serde_json::json;
use tokio::process::{Child, Command};

/// PostgreSQL server of the benchmark.
pub const DATABASE_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// RabbitMQ of the benchmark.
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Database the scenarios run in; recreated for each.
pub const DATABASE: &str = "erp_sync_bench";
/// Prefix of the benchmark's exchanges and queues.
pub const PREFIX: &str = "erp-sync-bench";
/// Buyers in the simulator's data set: enough Active buyers with ERP ids for the
/// largest run over distinct buyers.
pub const SIMULATOR_BUYERS: usize = 125_000;
/// Port of the simulator process.
pub const SIMULATOR_PORT: u16 = 18_089;

/// Publisher confirms outstanding at once while preloading.
const PRELOAD_WINDOW: usize = 2_000;

/// Runs the harness's own binary as `erp-sync`, for the worker and simulator processes.
pub fn run_as_erp_sync(arguments: &[String]) -> ExitCode {
    erp_sync::cli::main_with_args(
        std::iter::once("erp-sync".to_owned()).chain(arguments.iter().cloned()),
    )
}

/// What the benchmark shares between scenarios.
pub struct Bench {
    pub scale: f64,
    exe: PathBuf,
    /// Ids of Active buyers with ERP ids in the simulator's data set, in a fixed order.
    pub buyers: Vec<String>,
}

impl Bench {
    pub fn new(scale: f64) -> anyhow::Result<Bench> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own binary")?;
        eprintln!("generating the simulator's data set of {SIMULATOR_BUYERS} buyers to pick ids");
        let data = generator::generate(
            DEFAULT_SEED,
            SIMULATOR_BUYERS,
            erp_sync::simulator::SimulatorConfig::default().sellers,
        );
        let buyers = data
            .find_buyers(BuyerCase::Active)
            .map(|buyer| buyer.id.clone())
            .collect();
        Ok(Bench { scale, exe, buyers })
    }

    /// A count scaled by `--scale`, at least one.
    pub fn scaled(&self, count: usize) -> usize {
        ((count as f64 * self.scale).round() as usize).max(1)
    }

    /// The configuration of the benchmark's worker.
    pub fn config(&self, database: &str) -> Config {
        let mut config = Config::defaults();
        config.database.url = Secret::new(format!("{DATABASE_SERVER}/{database}"));
        config.amqp.url = Secret::new(BROKER_URL);
        config.amqp.exchange = format!("{PREFIX}.events-exchange");
        config.amqp.queue = format!("{PREFIX}.events");
        config.amqp.dead_letter_exchange = format!("{PREFIX}.dead-exchange");
        config.amqp.dead_letter_queue = format!("{PREFIX}.dead");
        config.platform.url = format!("http://127.0.0.1:{SIMULATOR_PORT}");
        config
    }

    /// Environment variables that give a worker process `config` plus `extra`.
    fn worker_env(&self, config: &Config, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let amqp = &config.amqp;
        let mut vars = vec![
            (
                "ERP_SYNC_DATABASE_URL".to_owned(),
                config.database.url.expose().to_owned(),
            ),
            ("ERP_SYNC_AMQP_URL".to_owned(), amqp.url.expose().to_owned()),
            ("ERP_SYNC_AMQP_EXCHANGE".to_owned(), amqp.exchange.clone()),
            ("ERP_SYNC_AMQP_QUEUE".to_owned(), amqp.queue.clone()),
            (
                "ERP_SYNC_AMQP_DEAD_LETTER_EXCHANGE".to_owned(),
                amqp.dead_letter_exchange.clone(),
            ),
            (
                "ERP_SYNC_AMQP_DEAD_LETTER_QUEUE".to_owned(),
                amqp.dead_letter_queue.clone(),
            ),
            (
                "ERP_SYNC_PLATFORM_URL".to_owned(),
                config.platform.url.clone(),
            ),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            // No health listener: the benchmark needs no probe, and the port may be taken.
            ("ERP_SYNC_TELEMETRY_LISTEN".to_owned(), String::new()),
        ];
        vars.extend(
            extra
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone())),
        );
        vars
    }

    /// Drops and recreates the benchmark database, optionally from a template.
    pub async fn fresh_database(&self, template: Option<&str>) -> anyhow::Result<Database> {
        let admin = sqlx::PgPool::connect(&format!("{DATABASE_SERVER}/postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{DATABASE}\" WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        if let Some(template) = template {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{DATABASE}\" TEMPLATE \"{template}\""
            )))
            .execute(&admin)
            .await?;
        }
        admin.close().await;

        let config = self.config(DATABASE);
        Database::migrate(&config.database).await?;
        Database::connect(&config.database).await
    }

    /// Deletes and declares the benchmark's exchanges and queues.
    pub async fn fresh_queues(&self) -> anyhow::Result<BrokerLink> {
        let config = self.config(DATABASE);
        let link = BrokerLink::connect(&config.amqp).await?;
        link.delete_topology().await?;
        link.declare_topology().await?;
        Ok(link)
    }

    /// A synchronize event for the buyer at `index` (distinct buyers up to the data
    /// set's size), published `at` the given enqueue time.
    pub fn buyer_event(&self, index: usize) -> Vec<u8> {
        let buyer = &self.buyers[index % self.buyers.len()];
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "object": { "id": buyer, "objectType": "Buyer", "name": "Benchmark buyer" },
            "details": { "eventType": "updated", "enqueueTime": chrono::Utc::now().to_rfc3339() },
        })
        .to_string()
        .into_bytes()
    }

    /// Publishes bodies to the benchmark exchange with confirms outstanding in a window.
    pub async fn preload(
        &self,
        link: &BrokerLink,
        bodies: Vec<Vec<u8>>,
    ) -> anyhow::Result<Duration> {
        let publisher = link.publisher().await?;
        let exchange = self.config(DATABASE).amqp.exchange;
        let started = Instant::now();
        let mut confirms = futures::stream::iter(bodies)
            .map(|body| publish(&publisher, &exchange, body))
            .buffer_unordered(PRELOAD_WINDOW);
        while let Some(outcome) = confirms.next().await {
            anyhow::ensure!(
                outcome? == PublishOutcome::Confirmed,
                "the broker did not route a preloaded event"
            );
        }
        Ok(started.elapsed())
    }

    /// Starts the simulator process and waits until it answers.
    pub async fn start_simulator(&self) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .args([
                "simulate",
                "--listen",
                &format!("127.0.0.1:{SIMULATOR_PORT}"),
                "--buyers",
                &SIMULATOR_BUYERS.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .env("ERP_SYNC_SIMULATOR_REQUEST_LOG_CAPACITY", "200000")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().context("cannot start the simulator")?;
        let client = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{SIMULATOR_PORT}/_sim/health");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if client
                .get(&health)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(child);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the simulator did not start within 60 s")
    }

    /// Changes the simulator's run-time settings, such as its latency.
    pub async fn configure_simulator(&self, settings: serde_json::Value) -> anyhow::Result<()> {
        reqwest::Client::new()
            .patch(format!("http://127.0.0.1:{SIMULATOR_PORT}/_sim/config"))
            .json(&settings)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Clears the simulator's request log and counters.
    pub async fn clear_simulator(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        client
            .delete(format!("http://127.0.0.1:{SIMULATOR_PORT}/_sim/requests"))
            .send()
            .await?
            .error_for_status()?;
        client
            .delete(format!("http://127.0.0.1:{SIMULATOR_PORT}/_sim/stats"))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The simulator's request log: (arrival time, path) of every synchronize call.
    pub async fn synchronize_arrivals(
        &self,
    ) -> anyhow::Result<Vec<(chrono::DateTime<chrono::Utc>, String)>> {
        let entries: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{SIMULATOR_PORT}/_sim/requests?path=/public/v1/accounts/buyers/*/synchronize"
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        entries
            .into_iter()
            .map(|entry| {
                let at = entry["at"].as_str().unwrap_or_default().parse()?;
                Ok((at, entry["path"].as_str().unwrap_or_default().to_owned()))
            })
            .collect()
    }

    /// Starts a worker process with `extra` settings and waits until it consumes.
    pub async fn start_worker(
        &self,
        config: &Config,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Worker> {
        let mut command = Command::new(&self.exe);
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.worker_env(config, extra))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().context("cannot start the worker")?;
        let pid = child.id().context("the worker exited at once")?;
        let memory = MemorySampler::start(pid);
        Ok(Worker {
            child,
            memory,
            started: Instant::now(),
        })
    }

    /// Information about this machine and the software versions, for the report.
    pub async fn machine(&self) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines().next().map(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .unwrap_or("0")
                        .parse::<u64>()
                        .unwrap_or(0)
                })
            })
            .map(|kib| format!("{:.0} GiB", kib as f64 / 1_048_576.0))
            .unwrap_or_default();
        let kernel = command_output("uname", &["-r"]).await;
        let postgres = match sqlx::PgPool::connect(&format!("{DATABASE_SERVER}/postgres")).await {
            Ok(pool) => sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&pool)
                .await
                .unwrap_or_default(),
            Err(_) => "unknown".to_owned(),
        };
        let rabbitmq = command_output("rabbitmqctl", &["version"]).await;
        let rustc = command_output("rustc", &["--version"]).await;
        format!(
            "{cpu}, {cores} cores, {memory} RAM, Linux {kernel}; PostgreSQL {postgres}; RabbitMQ {rabbitmq}; {rustc}; erp-sync {}",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// Removes the benchmark's queues and database.
    pub async fn cleanup(&self) {
        if let Ok(link) = BrokerLink::connect(&self.config(DATABASE).amqp).await {
            let _ = link.delete_topology().await;
            link.close().await;
        }
        if let Ok(admin) = sqlx::PgPool::connect(&format!("{DATABASE_SERVER}/postgres")).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{DATABASE}\" WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
    }
}

async fn publish(
    publisher: &Publisher,
    exchange: &str,
    body: Vec<u8>,
) -> anyhow::Result<PublishOutcome> {
    let message = OutboundMessage {
        routing_key: "accounts.buyer.updated".to_owned(),
        body,
        ..OutboundMessage::default()
    };
    Ok(publisher.publish_event(exchange, &message).await?)
}

async fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        Err(_) => "unknown".to_owned(),
    }
}

/// A worker process and the memory it used.
pub struct Worker {
    child: Child,
    memory: MemorySampler,
    pub started: Instant,
}

impl Worker {
    /// Stops the worker with SIGTERM and returns its peak resident memory in bytes.
    pub async fn stop(mut self) -> anyhow::Result<u64> {
        let peak = self.memory.peak();
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => anyhow::ensure!(status?.success(), "the worker exited with an error"),
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the worker did not stop within 30 s of SIGTERM");
            }
        }
        Ok(peak)
    }
}

/// Samples a process's peak resident set size (VmHWM) every 100 ms.
struct MemorySampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    fn start(pid: u32) -> MemorySampler {
        let peak = Arc::new(AtomicU64::new(0));
        let shared = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(bytes) = peak_rss(pid) {
                    shared.fetch_max(bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        MemorySampler { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The peak resident set size of a process, in bytes, from `/proc/PID/status`.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Minimum pause between two counts of a run's progress.
const MIN_POLL_PAUSE: Duration = Duration::from_millis(50);

/// Maximum pause between two counts of a run's progress.
const MAX_POLL_PAUSE: Duration = Duration::from_secs(1);

/// Polls a count (a query with one bigint parameter, `argument`) until it reaches
/// `target`, returning (seconds since `since`, count) samples for the timeline plot, or
/// fails after `limit`.
pub async fn poll_until(
    database: &Database,
    sql: &'static str,
    argument: i64,
    target: i64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<(f64, i64)>> {
    let mut samples = vec![(0.0, 0)];
    loop {
        let count: i64 = sqlx::query_scalar(sql)
            .bind(argument)
            .fetch_one(database.pool())
            .await?;
        samples.push((since.elapsed().as_secs_f64(), count));
        if count >= target {
            return Ok(samples);
        }
        anyhow::ensure!(
            since.elapsed() < limit,
            "only {count} of {target} after {} s",
            limit.as_secs()
        );
        tokio::time::sleep(poll_pause(&samples, target)).await;
    }
}

/// Returns the pause before the next count: a quarter of the time the rest is
/// expected to take at the rate so far, between 50 ms and a second. The counts scan
/// the new audit rows, and counting ten times a second would take a good part of a
/// core from the worker and the database it measures.
fn poll_pause(samples: &[(f64, i64)], target: i64) -> Duration {
    let Some(&(seconds, count)) = samples.last() else {
        return MAX_POLL_PAUSE;
    };
    if seconds <= 0.0 || count <= 0 {
        return MAX_POLL_PAUSE;
    }
    let rate = count as f64 / seconds;
    let remaining = (target - count).max(0) as f64 / rate;
    Duration::from_secs_f64(remaining / 4.0).clamp(MIN_POLL_PAUSE, MAX_POLL_PAUSE)
}
