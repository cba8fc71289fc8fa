//! Several worker processes on one queue and one database, with kills: the guarantees
//! of one worker hold across all of them.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use erp_sync::simulator::LinkCase;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::support::checks::{
    assert_attempts_never_overlap, assert_settled_exactly_once, attempt_rows,
};
use crate::support::{FaultEnv, Resends, envelope};

/// Link events per link, alternating blocked and unblocked; the last one is newest.
const LINK_EVENTS: usize = 5;

/// Builds an ERP-link event enqueued at `at`.
fn link_event(link: &str, blocked: bool, at: DateTime<Utc>) -> Value {
    let (event_type, data) = if blocked {
        (
            "blocked",
            Some(json!({ "reason": "Credit limit exceeded" })),
        )
    } else {
        ("unblocked", None)
    };
    let mut event = envelope("ErpLink", link, event_type, data);
    event["details"]["enqueueTime"] = json!(at.to_rfc3339());
    event
}

/// Three workers share the queue and the database while events about a few buyers and
/// ERP links arrive out of order, and one worker at a time is killed and started again.
/// Afterwards every event is settled once and attempts about one object never
/// overlapped. Link commands ran in `enqueueTime` order with the newest event deciding,
/// and the synchronizations of one buyer were coalesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_kills() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_DISPATCH_LEASE", "3s");
    env.set("ERP_SYNC_DISPATCH_COALESCE_WINDOW", "500ms");
    env.set_latency(Duration::from_millis(50), Duration::from_millis(400));

    let buyers = env.active_buyers(8);
    let links: Vec<String> = {
        let data = env.simulator.control().data();
        data.find_links(LinkCase::Blockable)
            .take(3)
            .map(|link| link.id.clone())
            .collect()
    };
    let seed: u64 = rand::random();
    eprintln!("event order and kill schedule seed: {seed}");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);

    let mut events: Vec<Value> = (0..80)
        .map(|index| envelope("Buyer", &buyers[index % buyers.len()], "updated", None))
        .collect();
    let base = Utc::now();
    for link in &links {
        for index in 0..LINK_EVENTS {
            let at = base + chrono::Duration::milliseconds(index as i64 * 100);
            events.push(link_event(link, index.is_multiple_of(2), at));
        }
    }
    events.shuffle(&mut random);

    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.start_worker().await);
    }
    let stream = env.publish_stream(events.clone(), Duration::from_millis(60));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(random.random_range(800..=1800))).await;
        let victim = random.random_range(0..workers.len());
        workers[victim].kill().await;
        workers[victim] = env.start_worker().await;
    }
    stream.await.expect("every event is published");
    env.wait_until_settled(&events, Duration::from_secs(90))
        .await;

    assert_settled_exactly_once(&env, &events, Resends::SameKeyOnly).await;
    let db = env.db().await;
    for object in buyers.iter().chain(&links) {
        assert_attempts_never_overlap(object, &attempt_rows(&db, object).await);
    }

    for link in &links {
        let finished: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT enqueue_time FROM commands WHERE object_id = $1 AND state = 'applied' \
             ORDER BY finished_at",
        )
        .bind(link)
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(
            finished.is_sorted(),
            "{link}: commands ran in enqueueTime order: {finished:?}"
        );
        let status = env
            .simulator
            .control()
            .object(link)
            .and_then(|object| object["status"].as_str().map(str::to_owned));
        let newest_blocks = (LINK_EVENTS - 1).is_multiple_of(2);
        let expected = if newest_blocks { "Blocked" } else { "Active" };
        assert_eq!(
            status.as_deref(),
            Some(expected),
            "{link}: the newest event decides"
        );
    }

    let planned: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT step, count(*) FROM audit WHERE object_id LIKE 'BUY-%' \
         AND step IN ('command_planned', 'coalesced') GROUP BY step",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        planned.values().sum::<i64>(),
        80,
        "every buyer event was planned or joined a pending call: {planned:?}"
    );
    assert!(
        planned.get("coalesced").copied().unwrap_or(0) > 0,
        "some events joined a pending synchronization: {planned:?}"
    );
}
