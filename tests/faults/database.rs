//! Database faults: a crash with an immediate restart, an outage, a read-only failover
//! to a promoted standby, and slow platform calls that must not hold connections.
//!
//! While the database is unavailable, consumption pauses: no delivery is acknowledged
//! before its event is committed, so the broker keeps what the worker has not stored.

use std::time::Duration;

use erp_sync::simulator::{Fault, FaultRule};
use tokio::time::Instant;

use crate::support::checks::{assert_settled_exactly_once, assert_settled_exactly_once_at};
use crate::support::{
    ACCOUNTS, DATABASE, FaultEnv, PrivateCluster, Resends, TcpProxy, wait_until,
    wait_until_settled_at,
};

/// Message of the error ingest logs when it cannot store a batch.
const CANNOT_STORE: &str = "cannot store events; holding the batch unacknowledged and retrying";
/// Message logged when ingest can store again.
const STORING_AGAIN: &str = "database reachable again; storing events";
/// Display of sqlx's `PoolTimedOut` error.
const POOL_TIMED_OUT: &str = "pool timed out while waiting for an open connection";

/// A crash of PostgreSQL (`pg_ctl -m immediate stop`) followed at once by a start:
/// every pooled connection is dead, and the pool replaces each one, either when its
/// test before use fails or after a statement on it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_crash_and_restart() {
    let env = FaultEnv::start().await;
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(40));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(100));
    env.wait_until_settled(&events[..10], Duration::from_secs(30))
        .await;

    env.cluster.crash().await;
    env.cluster.boot().await;
    stream.await.expect("every event is published");
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;

    assert!(
        worker.is_running(),
        "the worker rode out the restart: {}",
        worker.log_tail(30)
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// PostgreSQL stays down for a while: ingest keeps its batch unacknowledged, the
/// broker keeps the rest of the queue, and everything settles once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_pauses_consumption() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_AMQP_PREFETCH", "10");
    env.set("ERP_SYNC_INGEST_BATCH_SIZE", "5");
    let worker = env.start_worker().await;
    let queue = env.producer.config().queue.clone();
    let events = env.buyer_events(&env.active_buyers(40));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(50));
    env.wait_until_settled(&events[..5], Duration::from_secs(30))
        .await;

    env.cluster.crash().await;
    worker
        .wait_for_log("the failed store", Duration::from_secs(15), |line| {
            line.is("ERROR", CANNOT_STORE)
        })
        .await;
    stream.await.expect("every event is published");

    // The broker keeps the events: at most a prefetch window is delivered, and none of
    // them is acknowledged while the database is down.
    let mut depth = None;
    let held = crate::support::wait_for(
        Duration::from_secs(20),
        || {
            let broker = &env.broker;
            let queue = queue.clone();
            async move { broker.queue_depth(&queue).await }
        },
        |&(ready, unacknowledged)| {
            depth = Some((ready, unacknowledged));
            ready > 0 && unacknowledged > 0 && unacknowledged <= 10
        },
    )
    .await;
    assert!(held, "the queue holds the unstored events: {depth:?}");

    env.cluster.boot().await;
    worker
        .wait_for_log("ingest storing again", Duration::from_secs(15), |line| {
            line.is("INFO", STORING_AGAIN)
        })
        .await;
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;

    let log = worker.log();
    assert_eq!(
        log.count("ERROR", CANNOT_STORE),
        1,
        "the outage is logged once by ingest"
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// A failover: the old primary becomes read-only (as a demoted server would), a
/// standby that replicated everything is promoted, and the address the worker uses
/// now leads to the new primary. Connections that fail with 25006 (read-only
/// transaction) are discarded and the pool reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_failover_reconnects() {
    let mut env = FaultEnv::start().await;
    let standby = PrivateCluster::start_standby_of(&env.cluster).await;
    let proxy = TcpProxy::start(env.cluster.address()).await;
    let through_proxy = format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", proxy.port());
    env.set("ERP_SYNC_DATABASE_URL", through_proxy.clone());
    let worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(40));
    let stream = env.publish_stream(events.clone(), Duration::from_millis(100));
    wait_until_settled_at(&through_proxy, &events[..10], Duration::from_secs(30)).await;

    env.cluster
        .psql(
            DATABASE,
            "ALTER SYSTEM SET default_transaction_read_only = on",
        )
        .await;
    env.cluster.psql(DATABASE, "SELECT pg_reload_conf()").await;
    wait_until(
        "no write transaction is open on the old primary",
        Duration::from_secs(10),
        || async {
            let writers = env
                .cluster
                .psql(
                    DATABASE,
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
                )
                .await;
            writers.trim() == "0"
        },
    )
    .await;
    let last_write = env
        .cluster
        .psql(DATABASE, "SELECT pg_current_wal_lsn()")
        .await;
    let caught_up = format!(
        "SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        last_write.trim()
    );
    wait_until(
        "the standby replayed every write",
        Duration::from_secs(10),
        || async { standby.psql(DATABASE, &caught_up).await.trim() == "t" },
    )
    .await;
    standby.promote().await;
    proxy.switch_upstream(standby.address());

    stream.await.expect("every event is published");
    wait_until_settled_at(&through_proxy, &events, Duration::from_secs(60)).await;

    let log = worker.log();
    assert!(
        log.contains("read-only transaction"),
        "the worker met the read-only server: {}",
        log.tail(30)
    );
    assert!(
        log.contains("replacing the pooled database connections"),
        "the worker replaced its connections"
    );
    assert_settled_exactly_once_at(&env, &through_proxy, &events, Resends::Never).await;
}

/// Platform calls that take 10 s each must not hold a transaction or a pooled
/// connection: with a pool of 5 and 50 calls at once, no session stays idle in a
/// transaction for a second and no task waits for a connection in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_keep_the_pool_free() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DATABASE_POOL_SIZE", "5");
    env.set("ERP_SYNC_AMQP_PREFETCH", "20");
    env.simulator
        .control()
        .add_fault(
            FaultRule::new(
                format!("{ACCOUNTS}/buyers/*/synchronize"),
                Fault::Delay {
                    delay: Duration::from_secs(10),
                },
            )
            .method("POST"),
        )
        .expect("the fault rule is valid");
    let worker = env.start_worker().await;
    let events = env.buyer_events(&env.active_buyers(50));

    let sampler = ActivitySampler::start(&env.cluster.url("postgres")).await;
    let started = Instant::now();
    for event in &events {
        env.producer.publish(event).await;
    }
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;
    let took = started.elapsed();
    let samples = sampler.stop();

    assert!(
        took < Duration::from_secs(40),
        "50 calls of 10 s each ran side by side, not in turn: {took:?}"
    );
    assert!(
        samples.count > 10,
        "pg_stat_activity was sampled while the calls ran: {samples:?}"
    );
    // Samples 500 ms apart see any idle period of a second at half a second or more.
    assert!(
        samples.longest_idle_in_transaction < Duration::from_millis(500),
        "a session was idle in a transaction for {:?}",
        samples.longest_idle_in_transaction
    );
    assert!(
        samples.max_sessions <= 5,
        "the worker held at most its pool of connections: {samples:?}"
    );
    let log = worker.log();
    assert!(
        !log.contains(POOL_TIMED_OUT),
        "a task waited for a connection in vain"
    );
    assert_settled_exactly_once(&env, &events, Resends::Never).await;
}

/// What sampling `pg_stat_activity` every 500 ms found about the worker's sessions.
#[derive(Debug, Default, Clone)]
struct ActivitySamples {
    count: usize,
    longest_idle_in_transaction: Duration,
    max_sessions: i64,
}

/// A background task that samples the worker's sessions every 500 ms.
struct ActivitySampler {
    task: tokio::task::JoinHandle<()>,
    samples: tokio::sync::watch::Receiver<ActivitySamples>,
}

impl ActivitySampler {
    /// Starts sampling through a connection to `url`.
    async fn start(url: &str) -> ActivitySampler {
        let (sender, samples) = tokio::sync::watch::channel(ActivitySamples::default());
        let pool = FaultEnv::connect_to(url).await;
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            loop {
                ticker.tick().await;
                let sample: Result<(i64, Option<f64>), _> = sqlx::query_as(
                    "SELECT count(*), \
                            max(EXTRACT(EPOCH FROM now() - state_change)) \
                                FILTER (WHERE state = 'idle in transaction')::float8 \
                     FROM pg_stat_activity WHERE application_name = 'erp-sync'",
                )
                .fetch_one(&pool)
                .await;
                let Ok((sessions, idle)) = sample else {
                    continue;
                };
                sender.send_modify(|samples| {
                    samples.count += 1;
                    samples.max_sessions = samples.max_sessions.max(sessions);
                    let idle = Duration::from_secs_f64(idle.unwrap_or(0.0).max(0.0));
                    samples.longest_idle_in_transaction =
                        samples.longest_idle_in_transaction.max(idle);
                });
            }
        });
        ActivitySampler { task, samples }
    }

    /// Stops sampling and returns what was found.
    fn stop(self) -> ActivitySamples {
        self.task.abort();
        self.samples.borrow().clone()
    }
}
