//! `erp-sync demo`: the whole pipeline once, on the local PostgreSQL and RabbitMQ and
//! the built-in simulator, with a realistic event file.
//!
//! The demo uses a database and queues of its own and empties them first, so a second
//! run prints the same counts. It exits with [`Exit::Incomplete`](crate::exit::Exit)
//! when an event is still unsettled at the time limit.

pub mod fixture;

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::BrokerLink;
use crate::config::{Config, Secret};
use crate::exit::Incomplete;
use crate::publish::{prepare_lines, publish_lines};
use crate::simulator::{self, Fault, FaultRule, SimulatorConfig};
use crate::storage::{Database, SettlementProgress};
use crate::worker::Worker;

/// Database of the demo, on the configured PostgreSQL server.
pub const DEMO_DATABASE: &str = "erp_sync_demo";
/// Prefix of the demo's exchanges and queues.
pub const DEMO_PREFIX: &str = "erp-sync-demo";

/// Interval of the progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the demo and prints its summary.
pub async fn run_demo(config: Config, timeout: Duration) -> anyhow::Result<()> {
    let mut config = demo_config(config)?;
    let started = Instant::now();

    println!(
        "erp-sync demo: resetting the database {DEMO_DATABASE:?} and the queues {DEMO_PREFIX}.*"
    );
    Database::recreate(&config.database)
        .await
        .context("cannot prepare the demo database")?;
    let link = BrokerLink::connect(&config.amqp).await?;
    link.delete_topology().await?;
    link.declare_topology().await?;

    let simulator_config = SimulatorConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        ..SimulatorConfig::default()
    };
    let simulator = simulator::start(simulator_config)
        .await
        .context("cannot start the simulator")?;
    let transient_buyer = fixture::transient_failure_buyer(&simulator.control().data());
    simulator.control().add_fault(
        FaultRule::new(
            format!("/public/v1/accounts/buyers/{transient_buyer}/synchronize"),
            Fault::Status {
                status: 503,
                retry_after: None,
                detail: Some("The ERP is busy; try again".to_owned()),
            },
        )
        .times(1),
    )?;
    config.platform.url = simulator.base_url();
    println!("erp-sync demo: simulator at {}", simulator.base_url());

    let worker = Worker::prepare(config.clone()).await?;
    let database = worker.database.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let lines = prepare_lines(fixture::DEMO_EVENTS, Some(fixture::MALFORMED_ROUTING_KEY));
    let publisher = link.publisher().await?;
    let report = publish_lines(&publisher, &config.amqp.exchange, lines).await?;
    link.close().await;
    let published = report.published as i64;
    println!(
        "erp-sync demo: published {published} messages from {}",
        fixture::DEMO_EVENTS_PATH
    );

    let progress = wait_for_settlement(&database, published, timeout).await;
    stop.cancel();
    let stopped = running.await.context("the worker task panicked")?;
    let elapsed = started.elapsed();

    let calls = simulator.control().stats();
    simulator.shutdown().await;
    stopped?;
    let progress = progress?;

    print_summary(&progress, calls.requests, published, elapsed);
    let outcomes = progress.outcomes;
    if outcomes.unsettled > 0 || outcomes.settled() < published {
        return Err(Incomplete(format!(
            "{} of {published} deliveries settled within {}",
            outcomes.settled(),
            humantime::format_duration(timeout)
        ))
        .into());
    }
    Ok(())
}

/// The configuration pointed at the demo's own database and queues.
fn demo_config(mut config: Config) -> anyhow::Result<Config> {
    let mut url = url::Url::parse(config.database.url.expose()).context("invalid database.url")?;
    url.set_path(DEMO_DATABASE);
    config.database.url = Secret::new(url.to_string());
    config.amqp.exchange = format!("{DEMO_PREFIX}.events-exchange");
    config.amqp.queue = format!("{DEMO_PREFIX}.events");
    config.amqp.dead_letter_exchange = format!("{DEMO_PREFIX}.dead-exchange");
    config.amqp.dead_letter_queue = format!("{DEMO_PREFIX}.dead");
    config.platform.token = Secret::new(simulator::DEFAULT_TOKEN);
    // The demo may run beside a worker, which listens on the default address.
    config.telemetry.listen = String::new();
    Ok(config)
}

/// Waits until every published delivery has an outcome, printing progress.
async fn wait_for_settlement(
    database: &Database,
    published: i64,
    timeout: Duration,
) -> anyhow::Result<SettlementProgress> {
    let deadline = Instant::now() + timeout;
    let interactive = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        let progress = database.settlement_progress().await?;
        let outcomes = progress.outcomes;
        let done = outcomes.settled() >= published && outcomes.unsettled == 0;

        let line = format!(
            "settled {}/{published} deliveries, {} events in progress, {} attempts",
            outcomes.settled(),
            outcomes.unsettled,
            progress.attempts
        );
        if interactive {
            eprint!("\r\x1b[2K{line}");
            if done {
                eprintln!();
            }
        } else if done || last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        let _ = std::io::stderr().flush();

        if done || Instant::now() >= deadline {
            if !done && interactive {
                eprintln!();
            }
            info!(
                settled = outcomes.settled(),
                published, "demo finished waiting"
            );
            return Ok(progress);
        }
        tokio::time::sleep(PROGRESS_INTERVAL).await;
    }
}

fn print_summary(
    progress: &SettlementProgress,
    platform_calls: u64,
    published: i64,
    elapsed: Duration,
) {
    let outcomes = progress.outcomes;
    let seconds = elapsed.as_secs_f64();
    println!();
    println!("{:<16}{:>10}", "outcome", "deliveries");
    for (name, count) in outcomes.named() {
        println!("{name:<16}{count:>10}");
    }
    if outcomes.unsettled > 0 {
        println!("{:<16}{:>10}", "unsettled", outcomes.unsettled);
    }
    println!("{:<16}{:>10}", "total", outcomes.deliveries());
    println!();
    println!("{:<16}{:>10}", "published", published);
    println!("{:<16}{:>10}", "platform calls", platform_calls);
    println!("{:<16}{:>10}", "attempts", progress.attempts);
    println!("{:<16}{:>10.1} s", "elapsed", seconds);
    println!(
        "{:<16}{:>10.0} /s",
        "events",
        outcomes.settled() as f64 / seconds.max(0.001)
    );
}
