//! The `erp-sync` binary against an OTLP collector that is down (nothing listens on
//! its port) or never responds (it accepts connections and stays silent), with Tokio's
//! default runtime and with one worker thread. Events must settle at the pace they do
//! with a healthy collector, the export failure may be logged once at most, and
//! SIGTERM must end the process with code 0 within its shutdown budget.

use std::time::{Duration, Instant};

use erp_sync::simulator::{BuyerCase, DEFAULT_TOKEN};
use serde_json::Value;

use crate::binary::{command, output_of, pipeline_env, terminate};
use crate::collector::{Collector, SilentCollector, closed_port_url, kind};
use crate::support::{TestEnv, envelope, wait_until};

/// Events published in each run.
const EVENTS_PER_RUN: usize = 20;

/// `dispatch.shutdown_grace` of the runs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `telemetry.shutdown_timeout` of the runs.
const TELEMETRY_SHUTDOWN: Duration = Duration::from_secs(2);

/// What the binary gives tasks still running after the command returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Slack on top of the shutdown budget for process start-up and teardown on a
/// loaded test machine.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// One run of the binary: how long 20 events took to settle after publishing, how
/// long the process took to exit after SIGTERM, its exit code and its output.
struct Run {
    settled_in: Duration,
    stopped_in: Duration,
    code: Option<i32>,
    output: String,
}

/// Returns a loopback address that was free a moment ago, for the run's health
/// listener.
fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Runs the binary exporting to `collector_url` (or to nothing), publishes 20 events,
/// waits until they settle, then sends SIGTERM and waits for the exit.
async fn run_worker(
    env: &TestEnv,
    collector_url: Option<&str>,
    worker_threads: Option<&str>,
    settled_before: i64,
) -> Run {
    let listen = free_loopback_address();
    let mut vars: Vec<(String, String)> = pipeline_env(env, DEFAULT_TOKEN)
        .into_iter()
        .filter(|(name, _)| name != "RUST_LOG" && name != "ERP_SYNC_TELEMETRY_LISTEN")
        .collect();
    let settings = [
        ("RUST_LOG", "info".to_owned()),
        ("ERP_SYNC_TELEMETRY_LISTEN", listen.clone()),
        (
            "ERP_SYNC_DISPATCH_SHUTDOWN_GRACE",
            humantime::format_duration(SHUTDOWN_GRACE).to_string(),
        ),
        (
            "ERP_SYNC_TELEMETRY_SHUTDOWN_TIMEOUT",
            humantime::format_duration(TELEMETRY_SHUTDOWN).to_string(),
        ),
        // Exports start while the events are processed, not after.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
    ];
    vars.extend(settings.map(|(name, value)| (name.to_owned(), value)));
    if let Some(url) = collector_url {
        vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url.to_owned()));
    }
    if let Some(threads) = worker_threads {
        vars.push(("TOKIO_WORKER_THREADS".to_owned(), threads.to_owned()));
    }

    let child = command(&vars, &["run"]).spawn().expect("erp-sync starts");
    let readyz = format!("http://{listen}/readyz");
    wait_until("the worker is ready", || {
        let readyz = readyz.clone();
        async move {
            reqwest::get(&readyz)
                .await
                .is_ok_and(|response| response.status().is_success())
        }
    })
    .await;

    let buyers: Vec<String> = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(EVENTS_PER_RUN)
            .map(|buyer| buyer.id.clone())
            .collect()
    });
    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    let published = Instant::now();
    env.publish_all(&events).await;
    env.wait_until_settled(settled_before + EVENTS_PER_RUN as i64)
        .await;
    let settled_in = published.elapsed();

    terminate(&child);
    let stopping = Instant::now();
    let (code, output) = tokio::time::timeout(Duration::from_secs(60), output_of(child))
        .await
        .expect("erp-sync exits after SIGTERM");
    Run {
        settled_in,
        stopped_in: stopping.elapsed(),
        code,
        output,
    }
}

/// Log lines that warn about exporting telemetry.
fn export_warnings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| line.contains("WARN") && (line.contains("OTLP") || line.contains("export")))
        .collect()
}

/// Checks a run against a faulty collector, with the run against a healthy one as
/// the pace to keep. A blocked export would cost at least the export time limit of
/// 5 s, so three times the healthy time plus a second separates the two.
fn check_run(label: &str, run: &Run, healthy: &Run) {
    let budget = SHUTDOWN_GRACE + TELEMETRY_SHUTDOWN + RUNTIME_SHUTDOWN;
    let warnings = export_warnings(&run.output);
    eprintln!(
        "{label}: 20 events settled in {:?} (healthy collector: {:?}); exit {:?} after {:?} (budget {budget:?}); export warnings: {warnings:#?}",
        run.settled_in, healthy.settled_in, run.code, run.stopped_in
    );
    assert_eq!(
        run.code,
        Some(0),
        "{label}: SIGTERM ends the worker cleanly:\n{}",
        run.output
    );
    assert!(
        run.stopped_in <= budget + SHUTDOWN_SLACK,
        "{label}: exit took {:?}, more than the budget of {budget:?}:\n{}",
        run.stopped_in,
        run.output
    );
    assert!(
        warnings.len() <= 1,
        "{label}: more than one export warning: {warnings:#?}"
    );
    assert!(!run.output.contains("panicked"), "{label}:\n{}", run.output);
    let pace = healthy.settled_in * 3 + Duration::from_secs(1);
    assert!(
        run.settled_in <= pace,
        "{label}: 20 events took {:?}, with a healthy collector {:?}",
        run.settled_in,
        healthy.settled_in
    );
}

/// Runs the binary against a healthy collector for the pace to keep, and checks that
/// the binary exported what it did.
async fn healthy_run(env: &TestEnv) -> Run {
    let collector = Collector::start().await;
    let run = run_worker(env, Some(&collector.url), None, 0).await;
    eprintln!(
        "healthy collector: 20 events settled in {:?}, exit after {:?}",
        run.settled_in, run.stopped_in
    );
    assert_eq!(run.code, Some(0), "{}", run.output);
    assert!(export_warnings(&run.output).is_empty(), "{}", run.output);
    let spans = collector.spans();
    let deliveries = spans
        .iter()
        .filter(|span| span.kind == kind::CONSUMER)
        .count();
    assert_eq!(
        deliveries, EVENTS_PER_RUN,
        "the healthy collector received every delivery"
    );
    assert!(
        spans
            .iter()
            .all(|span| span.service_name.as_deref() == Some("erp-sync"))
    );
    assert!(
        collector
            .metric_names()
            .contains("messaging.client.consumed.messages"),
        "metrics were exported too: {:?}",
        collector.metric_names()
    );
    run
}

#[tokio::test]
async fn closed_collector_port_never_blocks() {
    let env = TestEnv::start_with(|setup| setup.start_worker = false).await;
    let healthy = healthy_run(&env).await;
    let unexported = run_worker(&env, None, None, EVENTS_PER_RUN as i64).await;
    eprintln!(
        "no collector: 20 events settled in {:?}, exit after {:?}",
        unexported.settled_in, unexported.stopped_in
    );

    let closed = closed_port_url();
    let mut settled = 2 * EVENTS_PER_RUN as i64;
    for (label, threads) in [
        ("closed port, default runtime", None),
        ("closed port, one worker thread", Some("1")),
    ] {
        let run = run_worker(&env, Some(&closed), threads, settled).await;
        settled += EVENTS_PER_RUN as i64;
        check_run(label, &run, &healthy);
    }
    env.finish().await;
}

#[tokio::test]
async fn silent_collector_never_blocks() {
    let env = TestEnv::start_with(|setup| setup.start_worker = false).await;
    let healthy = healthy_run(&env).await;

    let silent = SilentCollector::start().await;
    let mut settled = EVENTS_PER_RUN as i64;
    for (label, threads) in [
        ("silent collector, default runtime", None),
        ("silent collector, one worker thread", Some("1")),
    ] {
        let run = run_worker(&env, Some(&silent.url), threads, settled).await;
        settled += EVENTS_PER_RUN as i64;
        check_run(label, &run, &healthy);
    }
    env.finish().await;
}
