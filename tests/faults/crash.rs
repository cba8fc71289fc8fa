//! Crash safety: SIGKILL at random moments while events are in flight, and a call the
//! platform applied whose result the worker never recorded.
//!
//! Retry state lives in PostgreSQL, not in the broker's redelivery count, so a worker
//! killed at any moment loses nothing. Unacknowledged deliveries come back and running
//! commands become due again when their lease ends. A command sent again carries the
//! idempotency key it was first sent with.

use std::time::Duration;

use erp_sync::simulator::{Fault, FaultRule, LinkCase, RequestFilter};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::support::checks::assert_settled_exactly_once;
use crate::support::{ACCOUNTS, FaultEnv, Resends, envelope, wait_until};

/// Ten events (buyers and ERP links) in flight while the worker is killed 25 times,
/// each time at a random moment, and started again. Every event ends settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_lose_no_event() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DISPATCH_LEASE", "3s");
    env.set_latency(Duration::from_millis(200), Duration::from_millis(1500));
    let links: Vec<String> = {
        let data = env.simulator.control().data();
        data.find_links(LinkCase::Blockable)
            .take(3)
            .map(|link| link.id.clone())
            .collect()
    };
    let mut events = env.buyer_events(&env.active_buyers(7));
    for link in &links {
        events.push(envelope(
            "ErpLink",
            link,
            "blocked",
            Some(json!({ "reason": "Overdue invoices" })),
        ));
    }
    for event in &events {
        env.producer.publish(event).await;
    }

    let seed: u64 = rand::random();
    eprintln!("kill schedule seed: {seed}");
    let mut schedule = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..25 {
        let mut worker = env.spawn_worker();
        let lifetime = Duration::from_millis(schedule.random_range(100..=1500));
        tokio::time::sleep(lifetime).await;
        worker.kill().await;
    }

    let _survivor = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(60))
        .await;

    let db = env.db().await;
    let (interrupted, redelivered): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit WHERE step = 'lease_expired'), \
                (SELECT count(*) FROM audit WHERE step = 'duplicate')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        interrupted > 0,
        "the kills hit commands in flight (leases expired: {interrupted}, redeliveries: {redelivered})"
    );

    let queue = env.producer.config().queue.clone();
    assert!(
        env.broker
            .queue_arguments(&queue)
            .await
            .contains("x-dead-letter-exchange"),
        "the work queue names a dead-letter exchange, so the broker drops nothing"
    );
    let dead_letter_queue = env.producer.config().dead_letter_queue.clone();
    assert_eq!(
        env.broker.queue_depth(&dead_letter_queue).await,
        Some((0, 0)),
        "no event was dead-lettered by the broker"
    );
    assert_settled_exactly_once(&env, &events, Resends::SameKeyOnly).await;
}

/// The platform applies a synchronization, but its response never arrives and the
/// worker is killed. After the command's lease ends, the next worker sends it again with the
/// same idempotency key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_call_is_sent_again_with_its_key() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DISPATCH_LEASE", "3s");
    let buyer = env.active_buyers(1).remove(0);
    let path = format!("{ACCOUNTS}/buyers/{buyer}/synchronize");
    env.simulator
        .control()
        .add_fault(
            FaultRule::new(path.clone(), Fault::Hang)
                .method("POST")
                .process_request()
                .times(1),
        )
        .expect("the fault rule is valid");
    let mut worker = env.start_worker().await;
    let events = env.buyer_events(std::slice::from_ref(&buyer));
    env.producer.publish(&events[0]).await;

    let control = env.simulator.control();
    let filter = RequestFilter::path(path.clone()).with_method("POST");
    wait_until(
        "the platform applied the call",
        Duration::from_secs(20),
        || async {
            control
                .find_requests(&filter)
                .iter()
                .any(|request| request.is_finished())
        },
    )
    .await;
    worker.kill().await;

    let _next = env.start_worker().await;
    env.wait_until_settled(&events, Duration::from_secs(30))
        .await;

    let calls = control.find_requests(&filter);
    assert_eq!(calls.len(), 2, "the call was sent twice: {calls:?}");
    let first_key = calls[0].header("idempotency-key");
    assert!(first_key.is_some());
    assert_eq!(
        first_key,
        calls[1].header("idempotency-key"),
        "the second call carries the first one's key"
    );
    assert_eq!(calls[1].status, Some(200));
    let gap = (calls[1].at - calls[0].at).to_std().unwrap();
    assert!(
        gap >= Duration::from_millis(2900),
        "the second call waited for the 3 s lease: {gap:?}"
    );

    let db = env.db().await;
    let steps: Vec<String> = sqlx::query_scalar(
        "SELECT step FROM audit WHERE object_id = $1 AND command_id IS NOT NULL ORDER BY id",
    )
    .bind(&buyer)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            "command_planned",
            "attempt_started",
            "lease_expired",
            "attempt_started",
            "attempt_finished",
            "applied"
        ],
        "the audit trail shows the lost attempt and the retry"
    );
    assert_settled_exactly_once(&env, &events, Resends::SameKeyOnly).await;
}
