//! Platform failures: retried when they may pass, parked when they will not.

use std::time::Duration;

use erp_sync::simulator::{BuyerCase, Fault, FaultRule, LinkCase, RequestFilter, RetryAfter};
use serde_json::json;

use crate::support::{TestEnv, envelope, id_of, wait_until};

fn synchronize_path(buyer: &str) -> String {
    format!("/public/v1/accounts/buyers/{buyer}/synchronize")
}

fn status(code: u16) -> Fault {
    Fault::Status {
        status: code,
        retry_after: None,
        detail: None,
    }
}

#[tokio::test]
async fn service_unavailable_is_retried_until_success() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    env.simulator
        .control()
        .add_fault(FaultRule::new(synchronize_path(&buyer), status(503)).times(1))
        .expect("the fault rule is valid");

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let calls = env
        .simulator
        .control()
        .find_requests(&RequestFilter::path(synchronize_path(&buyer)));
    let statuses: Vec<Option<u16>> = calls.iter().map(|call| call.status).collect();
    assert_eq!(statuses, vec![Some(503), Some(200)]);
    assert_eq!(
        calls[0].header("idempotency-key"),
        calls[1].header("idempotency-key"),
        "a retry carries the same idempotency key"
    );
    env.finish().await;
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    let rule = FaultRule::new(
        synchronize_path(&buyer),
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
            detail: None,
        },
    )
    .times(1);
    env.simulator
        .control()
        .add_fault(rule)
        .expect("the fault rule is valid");

    env.publish(&envelope("Buyer", Some(&buyer), "updated", None))
        .await;
    env.wait_until_settled(1).await;

    let calls = env
        .simulator
        .control()
        .find_requests(&RequestFilter::path(synchronize_path(&buyer)));
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= chrono::Duration::seconds(2),
        "the retry came after {waited}, before Retry-After"
    );
    env.finish().await;
}

#[tokio::test]
async fn not_found_parks_the_command() {
    let env = TestEnv::start().await;

    let event = envelope("Buyer", Some("BUY-0000-0000"), "updated", None);
    env.publish(&event).await;
    let counts = env.wait_until_settled(1).await;
    assert_eq!(counts.parked, 1);
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("permanent_failure")
    );

    let calls = env
        .simulator
        .control()
        .find_requests(&RequestFilter::path(synchronize_path("BUY-0000-0000")));
    assert_eq!(calls.len(), 1, "a 404 is not retried");
    let steps = env.audit_steps_of_event(id_of(&event)).await;
    assert_eq!(steps.last().map(String::as_str), Some("parked"));
    env.finish().await;
}

#[tokio::test]
async fn rejected_block_is_parked_with_the_platform_problem() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| {
        data.find_link(LinkCase::WithActiveLicensee)
            .unwrap()
            .id
            .clone()
    });

    let event = envelope(
        "ErpLink",
        Some(&link),
        "blocked",
        Some(json!({ "reason": "Overdue invoices" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("permanent_failure")
    );

    let calls = env.calls(format!("/public/v1/accounts/erp-links/{link}*"));
    let methods: Vec<&str> = calls.iter().map(|call| call.method.as_str()).collect();
    assert_eq!(
        methods,
        vec!["GET", "POST", "GET"],
        "the link is read again after the refusal"
    );

    let problem: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT detail -> 'problem' FROM audit WHERE step = 'attempt_finished' AND object_id = $1",
    )
    .bind(&link)
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert!(
        problem.is_some_and(|problem| problem.get("title").is_some()),
        "the Problem Details are kept"
    );
    env.finish().await;
}

#[tokio::test]
async fn disabled_link_is_parked_without_a_post() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Disabled).unwrap().id.clone());

    let event = envelope("ErpLink", Some(&link), "unblocked", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("erp_link_disabled")
    );

    let posts = env.simulator.control().find_requests(
        &RequestFilter::path(format!("/public/v1/accounts/erp-links/{link}/*")).with_method("POST"),
    );
    assert!(posts.is_empty());
    env.finish().await;
}

#[tokio::test]
async fn refused_token_pauses_dispatch_without_parking() {
    let env =
        TestEnv::start_with(|setup| setup.config.dispatch.auth_pause = Duration::from_secs(1))
            .await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    env.simulator
        .control()
        .add_fault(FaultRule::new(synchronize_path(&buyer), status(401)).times(1))
        .expect("the fault rule is valid");

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    env.publish(&event).await;

    let readiness = env.readiness();
    wait_until("dispatch pauses", || {
        let readiness = readiness.clone();
        async move { readiness.is_dispatch_paused() }
    })
    .await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let attempts: i32 = sqlx::query_scalar(
        "SELECT c.attempts FROM commands c JOIN command_events ce ON ce.command_id = c.id WHERE ce.event_id = $1",
    )
    .bind(id_of(&event))
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert_eq!(
        attempts, 1,
        "the refused attempt does not count against the retry budget"
    );
    wait_until("dispatch resumes", || {
        let readiness = readiness.clone();
        async move { !readiness.is_dispatch_paused() }
    })
    .await;
    env.finish().await;
}

#[tokio::test]
async fn retries_are_exhausted_then_parked() {
    let env = TestEnv::start_with(|setup| {
        setup.config.retry.max_attempts = 3;
        setup.config.retry.initial_delay = Duration::from_millis(50);
    })
    .await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());
    env.simulator
        .control()
        .add_fault(FaultRule::new(synchronize_path(&buyer), status(503)))
        .expect("the fault rule is valid");

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("retries_exhausted")
    );

    let calls = env
        .simulator
        .control()
        .find_requests(&RequestFilter::path(synchronize_path(&buyer)));
    assert_eq!(calls.len(), 3);
    env.finish().await;
}
