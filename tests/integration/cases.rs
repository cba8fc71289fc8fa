//! Failures seen in real systems of this kind, as scenarios: permanent and endless
//! failures (no hot loop), an outage of the platform, calls that hang, and
//! `Retry-After` with back-pressure. Times are scaled down where the behaviour stays
//! the same.

use std::time::Duration;

use chrono::{DateTime, Utc};
use erp_sync::simulator::{BuyerCase, Fault, FaultRule, LoggedRequest, RequestFilter, RetryAfter};
use serde_json::Value;

use crate::support::{TestEnv, envelope, id_of};

const BUYERS: &str = "/public/v1/accounts/buyers";

fn synchronize_path(buyer: &str) -> String {
    format!("{BUYERS}/{buyer}/synchronize")
}

fn buyers(env: &TestEnv, count: usize) -> Vec<String> {
    env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(count)
            .map(|buyer| buyer.id.clone())
            .collect()
    })
}

fn add_fault(env: &TestEnv, rule: FaultRule) {
    env.simulator
        .control()
        .add_fault(rule)
        .expect("the fault rule is valid");
}

fn calls_to(env: &TestEnv, path: &str) -> Vec<LoggedRequest> {
    env.simulator
        .control()
        .find_requests(&RequestFilter::path(path.to_owned()))
}

fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    (later - earlier).num_microseconds().unwrap_or(i64::MAX) as f64 / 1_000_000.0
}

/// A permanent failure is parked after one call; the events behind it settle at once.
#[tokio::test]
async fn unprocessable_entity_is_parked_without_retry() {
    let env = TestEnv::start().await;
    let buyers = buyers(&env, 21);
    let poisoned = &buyers[0];
    add_fault(
        &env,
        FaultRule::new(
            synchronize_path(poisoned),
            Fault::Status {
                status: 422,
                retry_after: None,
                detail: None,
            },
        ),
    );

    let bad = envelope("Buyer", Some(poisoned), "updated", None);
    let mut events = vec![bad.clone()];
    events.extend(
        buyers[1..]
            .iter()
            .map(|buyer| envelope("Buyer", Some(buyer), "updated", None)),
    );
    let started = Utc::now();
    env.publish_all(&events).await;
    let counts = env.wait_until_settled(21).await;

    assert_eq!(counts.applied, 20);
    assert_eq!(
        env.park_reason_of(id_of(&bad)).await.as_deref(),
        Some("permanent_failure")
    );
    let status: Option<i32> =
        sqlx::query_scalar("SELECT last_status FROM commands WHERE object_id = $1")
            .bind(poisoned)
            .fetch_one(env.database.pool())
            .await
            .unwrap();
    assert_eq!(status, Some(422), "the park records the HTTP status");
    assert_eq!(
        calls_to(&env, &synchronize_path(poisoned)).len(),
        1,
        "no retry of a 422"
    );
    let settled_within = seconds_between(started, Utc::now());
    assert!(
        settled_within < 10.0,
        "the valid events did not wait: {settled_within} s"
    );
    env.finish().await;
}

/// An endless 503 is retried on a growing schedule, then parked; the broker never
/// redelivers the event.
#[tokio::test]
async fn endless_unavailability_is_retried_on_a_schedule_then_parked() {
    let env = TestEnv::start_with(|setup| {
        setup.config.retry.max_attempts = 5;
        setup.config.retry.initial_delay = Duration::from_millis(100);
    })
    .await;
    let buyers = buyers(&env, 21);
    let failing = &buyers[0];
    add_fault(
        &env,
        FaultRule::new(
            synchronize_path(failing),
            Fault::Status {
                status: 503,
                retry_after: None,
                detail: None,
            },
        ),
    );

    let bad = envelope("Buyer", Some(failing), "updated", None);
    let mut events = vec![bad.clone()];
    events.extend(
        buyers[1..]
            .iter()
            .map(|buyer| envelope("Buyer", Some(buyer), "updated", None)),
    );
    env.publish_all(&events).await;
    let counts = env.wait_until_settled(21).await;

    assert_eq!(counts.applied, 20);
    assert_eq!(
        env.park_reason_of(id_of(&bad)).await.as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(
        calls_to(&env, &synchronize_path(failing)).len(),
        5,
        "exactly the configured attempts, no hot loop"
    );
    let steps = env.audit_steps_of_event(id_of(&bad)).await;
    assert_eq!(steps.iter().filter(|step| *step == "received").count(), 1);
    assert!(
        !steps.contains(&"duplicate".to_owned()),
        "the broker never redelivered the event: {steps:?}"
    );
    env.finish().await;
}

/// Retry state lives in PostgreSQL, not in broker redelivery counts: events outlast a
/// platform outage and settle when it ends.
#[tokio::test]
async fn events_outlast_a_platform_outage() {
    let env = TestEnv::start_with(|setup| {
        setup.config.retry.initial_delay = Duration::from_millis(200);
        setup.config.retry.max_attempts = 12;
    })
    .await;
    add_fault(
        &env,
        FaultRule::new(
            format!("{BUYERS}/*"),
            Fault::Status {
                status: 503,
                retry_after: None,
                detail: None,
            },
        ),
    );
    let buyers = buyers(&env, 5);
    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    env.publish_all(&events).await;

    crate::support::wait_until("every command failed at least twice", || {
        let database = env.database.clone();
        async move {
            let failed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM commands WHERE attempts >= 2")
                    .fetch_one(database.pool())
                    .await
                    .unwrap();
            failed == 5
        }
    })
    .await;
    env.simulator.control().clear_faults();

    let counts = env.wait_until_settled(5).await;
    assert_eq!(counts.applied, 5);
    assert_eq!(counts.dead_lettered, 0);
    env.finish().await;
}

/// A call that never answers and one whose body stalls end at the timeout, are audited
/// as transient timeouts and retried; the other events do not wait for them.
#[tokio::test]
async fn hanging_calls_time_out_and_others_proceed() {
    let env =
        TestEnv::start_with(|setup| setup.config.platform.timeout = Duration::from_secs(2)).await;
    let buyers = buyers(&env, 12);
    add_fault(
        &env,
        FaultRule::new(synchronize_path(&buyers[0]), Fault::Hang).times(1),
    );
    add_fault(
        &env,
        FaultRule::new(synchronize_path(&buyers[1]), Fault::StallBody).times(1),
    );

    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    let started = Utc::now();
    env.publish_all(&events).await;

    crate::support::wait_until("the ten normal events settle", || {
        let database = env.database.clone();
        async move { database.outcome_counts().await.unwrap().applied >= 10 }
    })
    .await;
    let normal_done = seconds_between(started, Utc::now());
    assert!(
        normal_done < 2.0,
        "the normal events waited for the hanging calls: {normal_done} s"
    );

    let counts = env.wait_until_settled(12).await;
    assert_eq!(counts.applied, 12);
    let timeouts: Vec<(f64, Value)> = sqlx::query_as(
        "SELECT duration_ms, detail FROM audit WHERE step = 'attempt_finished' AND detail ->> 'result' = 'retry'",
    )
    .fetch_all(env.database.pool())
    .await
    .unwrap();
    assert_eq!(timeouts.len(), 2, "both hanging calls were retried");
    for (duration_ms, detail) in &timeouts {
        assert!(
            *duration_ms < 3000.0,
            "a hanging call took {duration_ms} ms, more than the timeout plus a second"
        );
        assert_eq!(detail["calls"][0]["error"], "timeout", "{detail}");
    }
    env.finish().await;
}

/// `Retry-After` in seconds and as a date is honoured as measured by the platform, a
/// one-day value is clamped and waits in PostgreSQL, retries without the header are
/// spread by jitter, and a 429 slows every call.
#[tokio::test]
async fn retry_after_is_honoured_and_retries_spread() {
    let mut env =
        TestEnv::start_with(|setup| setup.config.platform.max_pause = Duration::from_secs(3)).await;
    let buyers = buyers(&env, 53);
    let (seconds, date, day) = (&buyers[0], &buyers[1], &buyers[2]);
    let status = |code, retry_after| Fault::Status {
        status: code,
        retry_after,
        detail: None,
    };
    add_fault(
        &env,
        FaultRule::new(
            synchronize_path(seconds),
            status(429, Some(RetryAfter::Seconds(5))),
        )
        .times(2),
    );
    add_fault(
        &env,
        FaultRule::new(
            synchronize_path(date),
            status(503, Some(RetryAfter::HttpDate(7))),
        )
        .times(1),
    );
    add_fault(
        &env,
        FaultRule::new(
            synchronize_path(day),
            status(429, Some(RetryAfter::Seconds(86_400))),
        )
        .times(1),
    );
    for buyer in &buyers[3..] {
        add_fault(
            &env,
            FaultRule::new(synchronize_path(buyer), status(503, None)).times(1),
        );
    }

    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    env.publish_all(&events).await;
    crate::support::wait_until("all but the one-day command settle", || {
        let database = env.database.clone();
        async move { database.outcome_counts().await.unwrap().applied == 52 }
    })
    .await;

    let calls = calls_to(&env, &synchronize_path(seconds));
    assert_eq!(calls.len(), 3);
    for pair in calls.windows(2) {
        let waited = seconds_between(pair[0].at, pair[1].at);
        assert!(waited >= 5.0, "Retry-After: 5 was not honoured: {waited} s");
    }
    let calls = calls_to(&env, &synchronize_path(date));
    let waited = seconds_between(calls[0].at, calls[1].at);
    assert!(
        waited >= 6.0,
        "the HTTP-date Retry-After was not honoured: {waited} s"
    );

    let (state, wait): (String, f64) = sqlx::query_as(
        "SELECT state, EXTRACT(EPOCH FROM (next_attempt_at - now()))::float8 FROM commands WHERE object_id = $1",
    )
    .bind(day)
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert_eq!(
        state, "pending",
        "the clamped retry waits in PostgreSQL, holding no task"
    );
    assert!(
        wait > 800.0 && wait <= 900.0,
        "a one-day Retry-After is clamped to 15 minutes: {wait} s"
    );

    let mut retries: Vec<DateTime<Utc>> = buyers[3..]
        .iter()
        .map(|buyer| calls_to(&env, &synchronize_path(buyer))[1].at)
        .collect();
    retries.sort();
    let spread = seconds_between(retries[0], *retries.last().unwrap());
    assert!(
        spread >= 1.0,
        "the fifty retries arrived together, within {spread} s"
    );

    let first_429 = calls_to(&env, &synchronize_path(seconds))[0].at;
    let after_pause: Vec<LoggedRequest> = env
        .calls(format!("{BUYERS}/*/synchronize"))
        .into_iter()
        .filter(|call| call.at > first_429 + chrono::Duration::milliseconds(200))
        .collect();
    let earliest = after_pause.iter().map(|call| call.at).min().unwrap();
    let paused = seconds_between(first_429, earliest);
    assert!(
        paused >= 2.5,
        "calls went on {paused} s after a 429 instead of pausing"
    );

    env.stop_worker().await.unwrap();
    env.cleanup().await;
}

/// A configured maximum rate is never exceeded, so a backlog drains at that rate.
#[tokio::test]
async fn maximum_rate_is_never_exceeded() {
    let env = TestEnv::start_with(|setup| setup.config.platform.max_rate = 20.0).await;
    let buyers = buyers(&env, 60);
    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    env.publish_all(&events).await;
    env.wait_until_settled(60).await;

    let mut times: Vec<DateTime<Utc>> = env
        .simulator
        .control()
        .requests()
        .iter()
        .map(|call| call.at)
        .collect();
    times.sort();
    for (index, start) in times.iter().enumerate() {
        let within_second = times[index..]
            .iter()
            .take_while(|time| seconds_between(*start, **time) < 1.0)
            .count();
        assert!(
            within_second <= 21,
            "{within_second} calls within one second at a limit of 20 per second"
        );
    }
    let span = seconds_between(times[0], *times.last().unwrap());
    assert!(span >= 2.8, "60 calls at 20 per second took only {span} s");
    env.finish().await;
}
