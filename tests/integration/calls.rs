//! Each event type reaches the right endpoint with the right request.

use erp_sync::plan::BUYER_SYNC_EVENT_TYPES;
use erp_sync::simulator::{BuyerCase, LinkCase, RequestFilter};
use serde_json::json;

use crate::support::{TestEnv, envelope, id_of};

const ACCOUNTS: &str = "/public/v1/accounts";

#[tokio::test]
async fn buyer_events_synchronize_the_buyer() {
    let env = TestEnv::start().await;
    let buyers: Vec<String> = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(BUYER_SYNC_EVENT_TYPES.len())
            .map(|buyer| buyer.id.clone())
            .collect()
    });

    for (buyer, event_type) in buyers.iter().zip(BUYER_SYNC_EVENT_TYPES) {
        env.publish(&envelope("Buyer", Some(buyer), event_type, None))
            .await;
    }
    let counts = env
        .wait_until_settled(BUYER_SYNC_EVENT_TYPES.len() as i64)
        .await;
    assert_eq!(counts.applied, BUYER_SYNC_EVENT_TYPES.len() as i64);

    let calls = env.calls(format!("{ACCOUNTS}/buyers/*/synchronize"));
    let mut synchronized: Vec<String> = calls
        .iter()
        .map(|call| call.path.split('/').nth(5).unwrap_or_default().to_owned())
        .collect();
    synchronized.sort();
    let mut expected = buyers.clone();
    expected.sort();
    assert_eq!(
        synchronized, expected,
        "one synchronization per buyer event"
    );
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(call.status, Some(200));
        assert!(
            call.header("authorization")
                .is_some_and(|value| value.starts_with("Bearer "))
        );
        assert_eq!(call.header("accept"), Some("application/json"));
        assert!(
            call.header("user-agent")
                .is_some_and(|value| value.starts_with("erp-sync/"))
        );
        assert!(call.header("idempotency-key").is_some());
        assert_eq!(call.body, None, "synchronize is sent without a body");
    }
    let mut keys: Vec<_> = calls
        .iter()
        .map(|call| call.header("idempotency-key").unwrap().to_owned())
        .collect();
    keys.dedup();
    assert_eq!(
        keys.len(),
        calls.len(),
        "every command has its own idempotency key"
    );
    env.finish().await;
}

#[tokio::test]
async fn blocked_event_reads_then_blocks_with_note() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Blockable).unwrap().id.clone());

    let event = envelope(
        "ErpLink",
        Some(&link),
        "blocked",
        Some(json!({ "reason": "Credit limit exceeded in the ERP" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let calls = env.calls(format!("{ACCOUNTS}/erp-links/{link}*"));
    let summary: Vec<(String, String)> = calls
        .iter()
        .map(|call| (call.method.clone(), call.path.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("GET".to_owned(), format!("{ACCOUNTS}/erp-links/{link}")),
            (
                "POST".to_owned(),
                format!("{ACCOUNTS}/erp-links/{link}/block")
            ),
        ]
    );
    assert_eq!(
        calls[1].body_json(),
        Some(json!({ "note": "Credit limit exceeded in the ERP" }))
    );
    assert_eq!(calls[1].header("content-type"), Some("application/json"));
    assert!(
        calls[0].header("idempotency-key").is_none(),
        "reads carry no idempotency key"
    );

    let status = env.pick(|data| data.erp_link(&link).unwrap().status);
    assert_eq!(format!("{status:?}"), "Blocked");
    env.finish().await;
}

#[tokio::test]
async fn blocked_event_without_reason_sends_no_body() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Blockable).unwrap().id.clone());

    env.publish(&envelope("ErpLink", Some(&link), "blocked", None))
        .await;
    env.wait_until_settled(1).await;

    let calls = env.calls(format!("{ACCOUNTS}/erp-links/{link}/block"));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, None);
    env.finish().await;
}

#[tokio::test]
async fn unblocked_event_reads_then_unblocks() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Unblockable).unwrap().id.clone());

    let event = envelope("ErpLink", Some(&link), "unblocked", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let calls = env.calls(format!("{ACCOUNTS}/erp-links/{link}*"));
    let methods: Vec<(&str, &str)> = calls
        .iter()
        .map(|call| (call.method.as_str(), call.path.as_str()))
        .collect();
    assert_eq!(methods.len(), 2, "{methods:?}");
    assert_eq!(
        methods[1],
        (
            "POST",
            format!("{ACCOUNTS}/erp-links/{link}/unblock").as_str()
        )
    );
    env.finish().await;
}

#[tokio::test]
async fn link_already_in_target_status_gets_no_post() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Unblockable).unwrap().id.clone());

    let event = envelope(
        "ErpLink",
        Some(&link),
        "blocked",
        Some(json!({ "reason": "again" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );

    let posts = env.simulator.control().find_requests(
        &RequestFilter::path(format!("{ACCOUNTS}/erp-links/{link}/*")).with_method("POST"),
    );
    assert!(
        posts.is_empty(),
        "no POST for a link already Blocked: {posts:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn same_event_twice_makes_one_call() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    env.publish(&event).await;
    env.publish(&event).await;
    let counts = env.wait_until_settled(2).await;
    assert_eq!(counts.applied, 1);
    assert_eq!(counts.duplicate, 1);

    let calls = env.calls(format!("{ACCOUNTS}/buyers/{buyer}/synchronize"));
    assert_eq!(calls.len(), 1);
    let steps = env.audit_steps_of_event(id_of(&event)).await;
    assert!(steps.contains(&"duplicate".to_owned()), "{steps:?}");
    env.finish().await;
}

#[tokio::test]
async fn audit_trail_records_every_step() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let event = envelope("Buyer", Some(&buyer), "synchronizeRequested", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;

    let steps = env.audit_steps_of_event(id_of(&event)).await;
    assert_eq!(
        steps,
        vec![
            "received",
            "command_planned",
            "attempt_started",
            "attempt_finished",
            "applied",
            "applied"
        ]
    );
    let (status, duration): (Option<i32>, Option<f64>) = sqlx::query_as(
        "SELECT http_status, duration_ms FROM audit WHERE step = 'attempt_finished' AND object_id = $1",
    )
    .bind(&buyer)
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert_eq!(status, Some(200));
    assert!(duration.is_some_and(|ms| ms >= 0.0));
    env.finish().await;
}

#[tokio::test]
async fn other_events_are_ignored_without_calls() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let ignored_buyer = envelope("Buyer", Some(&buyer), "disabled", None);
    let seller = envelope("Seller", Some("SEL-1234-5678"), "created", None);
    env.publish(&ignored_buyer).await;
    env.publish(&seller).await;
    let counts = env.wait_until_settled(2).await;
    assert_eq!(counts.ignored, 2);

    assert!(
        env.simulator.control().requests().is_empty(),
        "no platform call"
    );
    let steps = env.audit_steps_of_event(id_of(&ignored_buyer)).await;
    assert_eq!(steps, vec!["received", "ignored"]);
    env.finish().await;
}
