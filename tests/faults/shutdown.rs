//! Graceful shutdown with calls in flight. SIGTERM and SIGINT stop consumption first,
//! let in-flight calls finish within `dispatch.shutdown_grace`, return prefetched
//! deliveries to the broker and exit 0. Calls still running after the grace period are
//! recorded as abandoned and retried by the next run. A second signal exits at once
//! with 130 and loses nothing committed.

use std::time::Duration;

use erp_sync::simulator::{Fault, FaultRule, RequestFilter};
use tokio::time::Instant;

use crate::support::checks::assert_settled_exactly_once;
use crate::support::{ACCOUNTS, FaultEnv, Resends, TcpProxy, WorkerProcess, wait_until};

/// Message logged when the first signal arrives.
const STOPPING: &str =
    "stopping: no new work is taken; in-flight calls may finish. Signal again to exit at once";

/// Makes every synchronize call take `delay` before the simulator responds.
fn delay_synchronize_calls(env: &FaultEnv, delay: Duration) {
    env.simulator
        .control()
        .add_fault(
            FaultRule::new(
                format!("{ACCOUNTS}/buyers/*/synchronize"),
                Fault::Delay { delay },
            )
            .method("POST"),
        )
        .expect("the fault rule is valid");
}

/// Waits until at least `count` synchronize calls are in flight at the simulator.
async fn wait_for_calls_in_flight(env: &FaultEnv, count: usize) {
    let control = env.simulator.control();
    wait_until(
        &format!("{count} calls are in flight"),
        Duration::from_secs(30),
        || async {
            let in_flight = control
                .find_requests(
                    &RequestFilter::path(format!("{ACCOUNTS}/buyers/*/synchronize"))
                        .with_method("POST"),
                )
                .iter()
                .filter(|request| request.status.is_none())
                .count();
            in_flight >= count
        },
    )
    .await;
}

/// Counts the audit rows recorded so far with this step.
async fn audit_count(env: &FaultEnv, step: &str) -> i64 {
    let db = env.db().await;
    let count = sqlx::query_scalar("SELECT count(*) FROM audit WHERE step = $1")
        .bind(step)
        .fetch_one(&db)
        .await
        .expect("the audit trail is read");
    db.close().await;
    count
}

/// Makes every insert into `events` take 50 ms, so ingest stores one delivery at a
/// time slowly and the rest of the prefetch window waits in the consumer.
async fn slow_down_event_inserts(env: &FaultEnv) {
    env.cluster
        .psql(
            crate::support::DATABASE,
            "CREATE FUNCTION fault_test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$; \
             CREATE TRIGGER fault_test_slow_insert BEFORE INSERT ON events \
             FOR EACH STATEMENT EXECUTE FUNCTION fault_test_slow_insert();",
        )
        .await;
}

/// Stops a worker with `signal` while calls are in flight and deliveries wait in its
/// prefetch window, then checks the shutdown and lets a second run finish the work.
async fn graceful_stop(signal: &str) {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_AMQP_PREFETCH", "100");
    env.set("ERP_SYNC_INGEST_BATCH_SIZE", "1");
    env.set("ERP_SYNC_DISPATCH_SHUTDOWN_GRACE", "5s");
    slow_down_event_inserts(&env).await;
    delay_synchronize_calls(&env, Duration::from_secs(2));
    let events = env.buyer_events(&env.active_buyers(200));
    for event in &events {
        env.producer.publish(event).await;
    }
    let mut worker = env.start_worker().await;
    wait_for_calls_in_flight(&env, 5).await;

    let signalled_at = Instant::now();
    worker.signal(signal);
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    let stopped_after = signalled_at.elapsed();
    assert_eq!(status.code(), Some(0), "{}", worker.log_tail(30));
    assert!(
        stopped_after < Duration::from_secs(5),
        "in-flight calls of 2 s finished within the grace period: {stopped_after:?}"
    );

    let log = worker.log();
    let stopping = log
        .lines
        .iter()
        .position(|line| line.is("INFO", STOPPING))
        .expect("the signal is logged");
    let after = &log.lines[stopping..];
    let stored_after = after
        .iter()
        .filter(|line| line.is("DEBUG", "event stored"))
        .count();
    assert!(
        stored_after <= 1,
        "consumption stopped at the signal; at most the batch being stored finished: {stored_after}"
    );
    let dispatch_stopping = after
        .iter()
        .position(|line| line.is("INFO", "dispatch stopping"))
        .expect("dispatch logs its stop");
    assert!(
        !after[dispatch_stopping..]
            .iter()
            .any(|line| line.is("DEBUG", "attempt started")),
        "no attempt starts after dispatch stopped"
    );
    assert_eq!(
        audit_count(&env, "attempt_abandoned").await,
        0,
        "every in-flight call finished and was recorded"
    );
    let stored = audit_count(&env, "received").await;
    assert!(
        (stored as usize) < events.len(),
        "some deliveries were still waiting when the worker stopped: {stored}"
    );

    // The unstored deliveries went back to the queue; the stored ones were acknowledged.
    let queue = env.producer.config().queue.clone();
    let mut depth = None;
    let returned = crate::support::wait_for(
        Duration::from_secs(20),
        || {
            let broker = &env.broker;
            let queue = queue.clone();
            async move { broker.queue_depth(&queue).await }
        },
        |&value| {
            depth = Some(value);
            value == (events.len() as u64 - stored as u64, 0)
        },
    )
    .await;
    assert!(
        returned,
        "{} unstored deliveries are ready again and none is unacknowledged: {depth:?}",
        events.len() as i64 - stored
    );

    env.simulator.control().clear_faults();
    let _next_run = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;
    assert_eq!(
        audit_count(&env, "duplicate").await,
        0,
        "no stored event was delivered again"
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_finish() {
    graceful_stop("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_calls_finish() {
    graceful_stop("INT").await;
}

/// Calls still running when the grace period ends are abandoned: the process exits 0,
/// the audit trail records each abandoned attempt, and the next run retries them at
/// once with the same idempotency key instead of waiting for their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_grace_are_abandoned() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DISPATCH_SHUTDOWN_GRACE", "2s");
    env.set("ERP_SYNC_DISPATCH_LEASE", "30s");
    delay_synchronize_calls(&env, Duration::from_secs(20));
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(3));
    for event in &events {
        env.producer.publish(event).await;
    }
    wait_for_calls_in_flight(&env, 3).await;

    let signalled_at = Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", worker.log_tail(30));
    let stopped_after = signalled_at.elapsed();
    assert!(
        stopped_after >= Duration::from_secs(2) && stopped_after < Duration::from_secs(6),
        "the worker waited for the grace period, then stopped: {stopped_after:?}"
    );
    assert_eq!(audit_count(&env, "attempt_abandoned").await, 3);

    env.simulator.control().clear_faults();
    let restarted_at = Instant::now();
    let _next_run = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(20))
        .await;
    assert!(
        restarted_at.elapsed() < Duration::from_secs(15),
        "abandoned commands were due at once, not after their 30 s lease"
    );
    assert_settled_exactly_once(&env, &events, Resends::SameKeyOnly).await;
}

/// A second signal ends the process at once with 130. Commands it was running keep
/// their leases; when those end, the next run retries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DISPATCH_SHUTDOWN_GRACE", "20s");
    env.set("ERP_SYNC_DISPATCH_LEASE", "3s");
    delay_synchronize_calls(&env, Duration::from_secs(30));
    let mut worker: WorkerProcess = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(2));
    for event in &events {
        env.producer.publish(event).await;
    }
    wait_for_calls_in_flight(&env, 2).await;

    worker.signal("TERM");
    worker
        .wait_for_log("the first signal", Duration::from_secs(5), |line| {
            line.is("INFO", STOPPING)
        })
        .await;
    let second_at = Instant::now();
    worker.signal("INT");
    let status = worker.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "{}", worker.log_tail(30));
    assert!(second_at.elapsed() < Duration::from_secs(2));

    env.simulator.control().clear_faults();
    let _next_run = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(30))
        .await;
    assert_eq!(
        audit_count(&env, "lease_expired").await,
        2,
        "the interrupted attempts were released when their leases ended"
    );
    assert_settled_exactly_once(&env, &events, Resends::SameKeyOnly).await;
}

/// SIGTERM while the network to the broker is silent: the worker cannot hear back from
/// the broker, so closing the connection waits one `amqp.operation_timeout` at most,
/// and the process still exits 0 within its shutdown budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_broker_stall_ends_in_time() {
    let mut env = FaultEnv::start().await;
    let proxy = TcpProxy::start(env.broker.address()).await;
    env.set(
        "ERP_SYNC_AMQP_URL",
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()),
    );
    // A heartbeat long enough that the stall is not detected before the signal.
    env.set("ERP_SYNC_AMQP_HEARTBEAT", "30s");
    env.set("ERP_SYNC_AMQP_OPERATION_TIMEOUT", "4s");
    env.set("ERP_SYNC_DISPATCH_SHUTDOWN_GRACE", "4s");
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(5));
    for event in &events {
        env.producer.publish(event).await;
    }
    env.wait_until_settled(&events, Duration::from_secs(20))
        .await;

    proxy.stall();
    let signalled_at = Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    let stopped_after = signalled_at.elapsed();
    assert_eq!(status.code(), Some(0), "{}", worker.log_tail(20));
    assert!(
        stopped_after < Duration::from_secs(7),
        "the worker exited {stopped_after:?} after the signal, past one operation timeout of 4 s"
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// SIGTERM while PostgreSQL is down: ingest gives up its unstored batch, which stays
/// with the broker, the process exits 0, and the next run stores and settles it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_database_outage_loses_nothing() {
    let env = FaultEnv::start().await;
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(20));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(50));
    env.wait_until_settled(&events[..5], Duration::from_secs(30))
        .await;

    env.cluster.crash().await;
    worker
        .wait_for_log("the failed store", Duration::from_secs(15), |line| {
            line.is(
                "ERROR",
                "cannot store events; holding the batch unacknowledged and retrying",
            )
        })
        .await;
    stream.await.expect("every event is published");
    let signalled_at = Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", worker.log_tail(20));
    // Dispatch may see the signal only when its wait for a connection times out (5 s).
    let stopped_after = signalled_at.elapsed();
    assert!(
        stopped_after < Duration::from_secs(8),
        "the worker exited {stopped_after:?} after the signal"
    );

    env.cluster.boot().await;
    let _next_run = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(30))
        .await;
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}
