//! Broker faults: a crash and a clean restart of the node, a silent network stall, a
//! channel closed by the broker, a consumer cancelled by the broker, and an outage
//! longer than `amqp.max_unavailable`.
//!
//! In each, the worker must notice the fault within seconds, log its cause once at
//! error level and report itself not consuming (not ready). It then reconnects on a
//! jittered backoff instead of a tight loop, declares its topology again and resumes,
//! without ever acknowledging a delivery of a dead channel on a new one.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::{
    BrokerOptions, FaultEnv, Options, Resends, TcpProxy, WorkerLog, WorkerProcess,
    checks::assert_settled_exactly_once, envelope, id_of, wait_until,
};

/// Message of the error logged when the consumer is lost.
const CONSUMER_LOST: &str = "RabbitMQ consumer lost; reconnecting";
/// Message logged when a consumer runs again after an outage.
const CONSUMER_RECOVERED: &str = "RabbitMQ consumer recovered";
/// Message of each reconnection attempt, with its delay in `delay_ms`.
const RECONNECTING: &str = "reconnecting to RabbitMQ";
/// `amqp.reconnect_min_delay` of the fault tests, in milliseconds.
const MIN_RECONNECT_DELAY_MS: u64 = 200;
/// `amqp.reconnect_max_delay` of the fault tests, in milliseconds.
const MAX_RECONNECT_DELAY_MS: u64 = 2000;

/// What the worker's log shows about one broker outage.
#[derive(Debug)]
struct Outage {
    /// Errors logged for the outage, the cause first.
    errors: Vec<String>,
    /// Delays before each reconnection attempt, in milliseconds.
    reconnect_delays: Vec<u64>,
    recovered: bool,
}

impl Outage {
    /// Reads the outage from the lines logged after the first `start` lines.
    fn since(log: &WorkerLog, start: usize) -> Outage {
        let lines = &log.lines[start.min(log.lines.len())..];
        Outage {
            errors: lines
                .iter()
                .filter(|line| line.is("ERROR", CONSUMER_LOST))
                .map(|line| line.field("error").unwrap_or_default().to_owned())
                .collect(),
            reconnect_delays: lines
                .iter()
                .filter(|line| line.is("DEBUG", RECONNECTING))
                .filter_map(|line| line.number("delay_ms"))
                .collect(),
            recovered: lines.iter().any(|line| line.is("INFO", CONSUMER_RECOVERED)),
        }
    }

    /// Checks that the cause is logged at error level once. The first failed
    /// reconnection may add a second line when its error differs, and later repeats go
    /// to debug level.
    fn assert_cause_logged_once(&self, cause: &str) {
        assert!(
            !self.errors.is_empty() && self.errors[0].contains(cause),
            "the first error names the cause {cause:?}: {:?}",
            self.errors
        );
        assert!(
            self.errors.len() <= 2,
            "one outage is logged at error level at most twice: {:?}",
            self.errors
        );
    }

    /// Checks that reconnection attempts follow the jittered exponential schedule: the
    /// n-th wait (from 0) is at least min(200 ms x 2^n, 2 s) and less than twice that,
    /// which allows a handful of attempts per second at most during `outage`.
    fn assert_backoff(&self, outage: Duration) {
        let attempts = self.reconnect_delays.len();
        assert!(attempts >= 1, "the worker tried to reconnect: {self:?}");
        let max_attempts = (outage.as_millis() as u64 / MIN_RECONNECT_DELAY_MS) as usize + 1;
        assert!(
            attempts <= max_attempts,
            "{attempts} reconnection attempts in {outage:?} is a tight loop: {:?}",
            self.reconnect_delays
        );
        let mut jittered = false;
        for (index, delay) in self.reconnect_delays.iter().enumerate() {
            let floor = (MIN_RECONNECT_DELAY_MS << index.min(16)).min(MAX_RECONNECT_DELAY_MS);
            assert!(
                *delay >= floor,
                "wait {index} is shorter than {floor} ms: {:?}",
                self.reconnect_delays
            );
            assert!(
                *delay <= 2 * floor,
                "wait {index} is longer than twice {floor} ms: {:?}",
                self.reconnect_delays
            );
            jittered |= *delay > floor;
        }
        assert!(jittered, "no wait has jitter: {:?}", self.reconnect_delays);
    }
}

fn settings_scaled_for_outages(env: &mut FaultEnv) {
    env.set("ERP_SYNC_AMQP_HEARTBEAT", "2s");
    env.set("ERP_SYNC_AMQP_OPERATION_TIMEOUT", "3s");
}

/// Checks that the broker never saw an acknowledgement of a delivery tag that its
/// channel did not hand out, which is how an ack of a dead channel's delivery sent on
/// a new channel would show.
fn assert_no_foreign_acks(env: &FaultEnv, worker: &WorkerProcess) {
    let broker_log = env.broker.log();
    assert!(
        !broker_log.contains("unknown delivery tag"),
        "an acknowledgement reached a channel that did not deliver it:\n{broker_log}"
    );
    assert!(
        !worker.log().contains("unknown delivery tag"),
        "the worker acknowledged a delivery on the wrong channel"
    );
}

/// Kills (or cleanly stops) the node while events flow, brings it back, and checks
/// the recovery.
async fn outage_while_events_flow(crash: bool) {
    let mut env = FaultEnv::start().await;
    settings_scaled_for_outages(&mut env);
    let worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(40));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(100));
    env.wait_until_settled(&events[..10], Duration::from_secs(30))
        .await;

    let start = worker.log().lines.len();
    let down_at = Instant::now();
    if crash {
        env.broker.kill().await;
    } else {
        env.broker.stop().await;
    }
    let lost = worker
        .wait_for_log("the consumer lost", Duration::from_secs(10), |line| {
            line.is("ERROR", CONSUMER_LOST)
        })
        .await;
    let noticed_after = down_at.elapsed();
    assert!(
        noticed_after < Duration::from_secs(5),
        "the loss was noticed after {noticed_after:?}: {lost:?}"
    );

    // Stay down until the worker has failed to reconnect a few times.
    wait_until(
        "three reconnections failed",
        Duration::from_secs(30),
        || {
            let outage = Outage::since(&worker.log(), start);
            async move { outage.reconnect_delays.len() >= 3 }
        },
    )
    .await;
    let outage_length = down_at.elapsed();
    env.broker.boot().await;
    worker
        .wait_for_log("the consumer recovered", Duration::from_secs(15), |line| {
            line.is("INFO", CONSUMER_RECOVERED)
        })
        .await;

    stream.await.expect("every event is published");
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;

    let outage = Outage::since(&worker.log(), start);
    assert!(outage.recovered);
    outage.assert_cause_logged_once("channel");
    outage.assert_backoff(outage_length + Duration::from_secs(5));
    assert_no_foreign_acks(&env, &worker);
    assert_eq!(
        env.broker.consumers(&env.producer.config().queue).await,
        1,
        "the worker consumes the work queue again"
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_loses_nothing() {
    outage_while_events_flow(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_broker_restart_resumes() {
    outage_while_events_flow(false).await;
}

/// A network that stops carrying bytes without closing anything is detected by the
/// AMQP heartbeat, not by a TCP error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_network_stall_is_detected() {
    let mut env = FaultEnv::start().await;
    let proxy = TcpProxy::start(env.broker.address()).await;
    settings_scaled_for_outages(&mut env);
    env.set(
        "ERP_SYNC_AMQP_URL",
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()),
    );
    let worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(30));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(100));
    env.wait_until_settled(&events[..5], Duration::from_secs(30))
        .await;

    let start = worker.log().lines.len();
    let stalled_at = Instant::now();
    proxy.stall();
    let lost = worker
        .wait_for_log("the consumer lost", Duration::from_secs(15), |line| {
            line.is("ERROR", CONSUMER_LOST)
        })
        .await;
    let noticed_after = stalled_at.elapsed();
    // The heartbeat is 2 s; a peer silent for two intervals is lost.
    assert!(
        noticed_after < Duration::from_secs(8),
        "the stall was noticed after {noticed_after:?}"
    );
    assert!(
        lost.field("error")
            .unwrap_or_default()
            .contains("heartbeat"),
        "the cause names the missing heartbeat: {lost:?}"
    );

    wait_until("a reconnection failed", Duration::from_secs(30), || {
        let outage = Outage::since(&worker.log(), start);
        async move { outage.reconnect_delays.len() >= 2 }
    })
    .await;
    proxy.resume();
    worker
        .wait_for_log("the consumer recovered", Duration::from_secs(20), |line| {
            line.is("INFO", CONSUMER_RECOVERED)
        })
        .await;

    stream.await.expect("every event is published");
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;
    let outage = Outage::since(&worker.log(), start);
    outage.assert_cause_logged_once("heartbeat");
    outage.assert_backoff(stalled_at.elapsed());
    assert_no_foreign_acks(&env, &worker);
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// The broker closes the consumer's channel with 406 PRECONDITION_FAILED when a
/// delivery stays unacknowledged past `consumer_timeout`, while the connection stays
/// up. The worker keeps its first delivery that long because its database is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_closed_by_broker_is_reopened() {
    let env = FaultEnv::start_with(Options {
        broker: BrokerOptions {
            consumer_timeout: Some(Duration::from_secs(5)),
        },
        ..Options::default()
    })
    .await;
    let worker = env.start_worker().await;
    let buyers = env.active_buyers(2);
    let first = envelope("Buyer", &buyers[0], "updated", None);
    let second = envelope("Buyer", &buyers[1], "updated", None);
    let start = worker.log().lines.len();

    env.cluster.pause();
    env.producer.publish(&first).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env
        .broker
        .log()
        .contains("delivery acknowledgement on channel")
    {
        assert!(
            Instant::now() < deadline,
            "the broker did not time out the delivery; broker log:\n{}",
            env.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.cluster.resume();

    let lost = worker
        .wait_for_log("the consumer lost", Duration::from_secs(10), |line| {
            line.is("ERROR", CONSUMER_LOST)
        })
        .await;
    let cause = lost.field("error").unwrap_or_default();
    assert!(
        cause.contains("PRECONDITION_FAILED") || cause.contains("406"),
        "the error carries the broker's reason: {lost:?}"
    );
    worker
        .wait_for_log("the consumer recovered", Duration::from_secs(10), |line| {
            line.is("INFO", CONSUMER_RECOVERED)
        })
        .await;

    let published_at = Instant::now();
    env.producer.publish(&second).await;
    env.wait_until_settled(std::slice::from_ref(&second), Duration::from_secs(10))
        .await;
    assert!(published_at.elapsed() < Duration::from_secs(10));
    env.wait_until_settled(std::slice::from_ref(&first), Duration::from_secs(10))
        .await;

    let outage = Outage::since(&worker.log(), start);
    assert!(outage.errors.len() <= 2, "{outage:?}");
    assert_eq!(
        env.broker.consumers(&env.producer.config().queue).await,
        1,
        "the worker consumes on a new channel"
    );
    assert_no_foreign_acks(&env, &worker);
    let db = env.db().await;
    let duplicates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit WHERE step = 'duplicate' AND event_id = $1")
            .bind(id_of(&first))
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        duplicates, 1,
        "the first event came back once, after its channel closed, and was recognised"
    );
    assert_settled_exactly_once(&env, &[first, second], Resends::Never).await;
}

/// Deleting the work queue makes the broker cancel the consumer (`basic.cancel`) on a
/// channel that stays open. The worker declares the queue again and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_work_queue_is_declared_again() {
    let env = FaultEnv::start().await;
    let worker = env.start_worker().await;
    let queue = env.producer.config().queue.clone();
    let start = worker.log().lines.len();

    env.broker.delete_queue(&queue).await;
    let lost = worker
        .wait_for_log("the consumer lost", Duration::from_secs(10), |line| {
            line.is("ERROR", CONSUMER_LOST)
        })
        .await;
    assert!(
        lost.field("error")
            .unwrap_or_default()
            .contains("cancelled"),
        "the error says the broker cancelled the consumer: {lost:?}"
    );
    worker
        .wait_for_log("the consumer recovered", Duration::from_secs(10), |line| {
            line.is("INFO", CONSUMER_RECOVERED)
        })
        .await;

    let events = env.buyer_events(&env.active_buyers(5));
    for event in &events {
        env.producer.publish(event).await;
    }
    env.wait_until_settled(&events, Duration::from_secs(20))
        .await;
    assert_eq!(env.broker.consumers(&queue).await, 1);
    Outage::since(&worker.log(), start).assert_cause_logged_once("cancelled");
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// With no broker for longer than `amqp.max_unavailable`, the worker exits with code 1
/// so that its supervisor restarts it, after a backoff schedule rather than a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_broker_outage_exits_non_zero() {
    let mut env = FaultEnv::start().await;
    settings_scaled_for_outages(&mut env);
    env.set("ERP_SYNC_AMQP_MAX_UNAVAILABLE", "6s");
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(10));
    for event in &events {
        env.producer.publish(event).await;
    }
    env.wait_until_settled(&events, Duration::from_secs(20))
        .await;

    let start = worker.log().lines.len();
    let down_at = Instant::now();
    env.broker.kill().await;
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    let exited_after = down_at.elapsed();

    assert_eq!(status.code(), Some(1), "{}", worker.log_tail(30));
    assert!(
        exited_after >= Duration::from_secs(6) && exited_after < Duration::from_secs(20),
        "the worker gave up after {exited_after:?}"
    );
    let log = worker.log();
    assert!(
        log.contains("no consumer on"),
        "the final error says why: {}",
        log.tail(10)
    );
    let outage = Outage::since(&log, start);
    outage.assert_cause_logged_once("channel");
    outage.assert_backoff(exited_after);
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}
