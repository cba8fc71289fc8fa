//! Delivery guarantees: per-object order, staleness, coalescing, seller fan-out, the
//! pair form, several workers at once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use erp_sync::simulator::{BuyerCase, Fault, FaultRule, LinkCase, SellerCase, SimulatorConfig};
use serde_json::{Value, json};

use crate::support::{TestEnv, envelope, id_of};

const ACCOUNTS: &str = "/public/v1/accounts";

/// An envelope with a chosen `enqueueTime`.
fn envelope_at(
    object_type: &str,
    object_id: Option<&str>,
    event_type: &str,
    data: Option<Value>,
    at: DateTime<Utc>,
) -> Value {
    let mut event = envelope(object_type, object_id, event_type, data);
    event["details"]["enqueueTime"] = json!(at.to_rfc3339());
    event
}

fn link_status(env: &TestEnv, link: &str) -> String {
    env.pick(|data| format!("{:?}", data.erp_link(link).unwrap().status))
}

/// Attempt rows of one object, in time order: (step, command).
async fn attempt_steps(env: &TestEnv, object_id: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT step, command_id FROM audit WHERE object_id = $1 \
         AND step IN ('attempt_started', 'attempt_finished') ORDER BY at, id",
    )
    .bind(object_id)
    .fetch_all(env.database.pool())
    .await
    .unwrap()
}

/// Checks that attempts about one object never overlapped: every start follows the
/// finish of the attempt before it.
fn assert_no_overlap(steps: &[(String, i64)], object_id: &str) {
    let mut running: Option<i64> = None;
    for (step, command) in steps {
        match step.as_str() {
            "attempt_started" => {
                assert_eq!(
                    running, None,
                    "{object_id}: command {command} started while {running:?} ran: {steps:?}"
                );
                running = Some(*command);
            }
            _ => {
                assert_eq!(
                    running,
                    Some(*command),
                    "{object_id}: unexpected finish: {steps:?}"
                );
                running = None;
            }
        }
    }
}

#[tokio::test]
async fn newest_link_event_decides_across_workers() {
    let mut env = TestEnv::start().await;
    env.start_worker().await;
    let link = env.pick(|data| data.find_link(LinkCase::Blockable).unwrap().id.clone());
    env.simulator
        .control()
        .add_fault(
            FaultRule::new(
                format!("{ACCOUNTS}/erp-links/{link}"),
                Fault::Status {
                    status: 503,
                    retry_after: None,
                    detail: None,
                },
            )
            .times(1),
        )
        .expect("the fault rule is valid");

    let base = Utc::now();
    let events: Vec<Value> = (0..6)
        .map(|index| {
            let event_type = if index % 2 == 0 {
                "blocked"
            } else {
                "unblocked"
            };
            let data =
                (event_type == "blocked").then(|| json!({ "reason": format!("reason {index}") }));
            envelope_at(
                "ErpLink",
                Some(&link),
                event_type,
                data,
                base + chrono::Duration::seconds(index),
            )
        })
        .collect();
    // The newest event (unblocked) goes out first, the rest in order behind it.
    env.publish(&events[5]).await;
    for event in &events[..5] {
        env.publish(event).await;
    }
    env.wait_until_settled(6).await;

    assert_eq!(
        link_status(&env, &link),
        "Active",
        "the newest event, unblocked, decides"
    );
    assert_eq!(
        env.outcome_of(id_of(&events[5])).await.as_deref(),
        Some("applied")
    );
    for event in &events[..5] {
        let outcome = env.outcome_of(id_of(event)).await;
        assert!(
            matches!(outcome.as_deref(), Some("superseded" | "applied")),
            "an older event is superseded, or applied before the newer ones: {outcome:?}"
        );
    }
    let finished_order: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT enqueue_time FROM commands WHERE object_id = $1 AND state = 'applied' ORDER BY finished_at",
    )
    .bind(&link)
    .fetch_all(env.database.pool())
    .await
    .unwrap();
    assert!(
        finished_order.is_sorted(),
        "commands of one link run in enqueueTime order: {finished_order:?}"
    );
    assert_no_overlap(&attempt_steps(&env, &link).await, &link);
    env.finish().await;
}

#[tokio::test]
async fn old_event_after_newer_one_settled_is_superseded() {
    let env = TestEnv::start().await;
    let link = env.pick(|data| data.find_link(LinkCase::Unblockable).unwrap().id.clone());
    let now = Utc::now();

    let newer = envelope_at("ErpLink", Some(&link), "unblocked", None, now);
    env.publish(&newer).await;
    env.wait_until_settled(1).await;
    assert_eq!(link_status(&env, &link), "Active");

    let older = envelope_at(
        "ErpLink",
        Some(&link),
        "blocked",
        Some(json!({ "reason": "late" })),
        now - chrono::Duration::seconds(5),
    );
    env.publish(&older).await;
    env.wait_until_settled(2).await;

    assert_eq!(
        env.outcome_of(id_of(&older)).await.as_deref(),
        Some("superseded")
    );
    assert_eq!(
        link_status(&env, &link),
        "Active",
        "the late, older block changed nothing"
    );
    let blocks = env.calls(format!("{ACCOUNTS}/erp-links/{link}/block"));
    assert!(blocks.is_empty(), "a superseded event makes no call");
    let steps = env.audit_steps_of_event(id_of(&older)).await;
    assert!(steps.contains(&"superseded".to_owned()), "{steps:?}");
    env.finish().await;
}

#[tokio::test]
async fn synchronizations_of_one_buyer_coalesce() {
    let mut env =
        TestEnv::start_with(|setup| setup.config.dispatch.coalesce_window = Duration::from_secs(2))
            .await;
    env.start_worker().await;
    let buyers: Vec<String> = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(50)
            .map(|buyer| buyer.id.clone())
            .collect()
    });

    let events: Vec<Value> = (0..1000)
        .map(|index| envelope("Buyer", Some(&buyers[index % 50]), "updated", None))
        .collect();
    env.publish_all(&events).await;
    let counts = env.wait_until_settled(1000).await;
    assert_eq!(counts.applied, 1000);

    let calls = env.calls(format!("{ACCOUNTS}/buyers/*/synchronize"));
    assert!(
        calls.len() >= 50,
        "every buyer is synchronized: {}",
        calls.len()
    );
    assert!(
        calls.len() <= 60,
        "about one call per buyer, not {}",
        calls.len()
    );

    let served: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE step IN ('command_planned', 'coalesced') AND object_id LIKE 'BUY-%'",
    )
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert_eq!(
        served, 1000,
        "the audit trail records every event a call served"
    );
    for buyer in &buyers[..5] {
        assert_no_overlap(&attempt_steps(&env, buyer).await, buyer);
    }
    env.finish().await;
}

#[tokio::test]
async fn seller_fan_out_pages_and_isolates_a_failure() {
    let env = TestEnv::start_with(|setup| {
        setup.simulator = SimulatorConfig {
            buyers: 3000,
            ..setup.simulator.clone()
        };
        setup.config.retry.max_attempts = 2;
        setup.config.retry.initial_delay = Duration::from_millis(50);
    })
    .await;
    // Buyers without ERP ids are rejected by the platform; the test fails one more.
    let (seller, buyers, rejected) = env.pick(|data| {
        let seller = data
            .find_seller_with_buyers(SellerCase::Changeable, 201..=300)
            .unwrap();
        let buyers: Vec<String> = data
            .buyers_of_seller(&seller.id)
            .map(|buyer| buyer.id.clone())
            .collect();
        let rejected: Vec<String> = data
            .buyers_of_seller(&seller.id)
            .filter(|buyer| !buyer.is_erp_activated())
            .map(|buyer| buyer.id.clone())
            .collect();
        (seller.id.clone(), buyers, rejected)
    });
    let failing = buyers
        .iter()
        .find(|buyer| !rejected.contains(buyer))
        .unwrap()
        .clone();
    env.simulator
        .control()
        .add_fault(FaultRule::new(
            format!("{ACCOUNTS}/buyers/{failing}/synchronize"),
            Fault::Status {
                status: 422,
                retry_after: None,
                detail: None,
            },
        ))
        .expect("the fault rule is valid");

    let event = envelope("Seller", Some(&seller), "disabled", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;

    let pages = env.calls(format!("{ACCOUNTS}/buyers"));
    assert_eq!(pages.len(), 3, "{} buyers in pages of 100", buyers.len());
    let synchronized = env.calls(format!("{ACCOUNTS}/buyers/*/synchronize"));
    assert_eq!(
        synchronized.len(),
        buyers.len(),
        "every buyer is called once"
    );
    let succeeded = synchronized
        .iter()
        .filter(|call| call.status == Some(200))
        .count();
    assert_eq!(
        succeeded,
        buyers.len() - rejected.len() - 1,
        "failing buyers do not hold up the others"
    );

    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("parked")
    );
    let mut parked: Vec<String> =
        sqlx::query_scalar("SELECT object_id FROM commands WHERE state = 'parked'")
            .fetch_all(env.database.pool())
            .await
            .unwrap();
    parked.sort();
    let mut expected = rejected.clone();
    expected.push(failing);
    expected.sort();
    assert_eq!(parked, expected, "exactly the failing buyers are parked");
    env.finish().await;
}

#[tokio::test]
async fn seller_event_is_applied_when_every_buyer_is() {
    let env = TestEnv::start().await;
    let (seller, buyer_count) = env.pick(|data| {
        let seller = data
            .find_seller_with_buyers(SellerCase::Changeable, 1..=10)
            .unwrap();
        (seller.id.clone(), data.buyers_of_seller(&seller.id).count())
    });

    let event = envelope("Seller", Some(&seller), "activated", None);
    env.publish(&event).await;
    env.wait_until_settled(1).await;

    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );
    let commands: i64 =
        sqlx::query_scalar("SELECT count(*) FROM command_events WHERE event_id = $1")
            .bind(id_of(&event))
            .fetch_one(env.database.pool())
            .await
            .unwrap();
    assert_eq!(
        commands as usize,
        buyer_count + 1,
        "the listing and one synchronization per buyer"
    );
    env.finish().await;
}

#[tokio::test]
async fn pair_form_resolves_then_blocks() {
    let env = TestEnv::start().await;
    let (link, buyer, seller) = env.pick(|data| {
        let link = data.find_link(LinkCase::Blockable).unwrap();
        (
            link.id.clone(),
            link.buyer.id.clone(),
            link.seller.id.clone(),
        )
    });

    let event = envelope(
        "ErpLink",
        None,
        "blocked",
        Some(json!({ "buyerId": buyer, "sellerId": seller, "reason": "Overdue" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;

    assert_eq!(
        env.outcome_of(id_of(&event)).await.as_deref(),
        Some("applied")
    );
    assert_eq!(link_status(&env, &link), "Blocked");
    let steps = env.audit_steps_of_event(id_of(&event)).await;
    assert!(steps.contains(&"link_resolved".to_owned()), "{steps:?}");
    let object: Option<String> = sqlx::query_scalar("SELECT object_id FROM events WHERE id = $1")
        .bind(id_of(&event))
        .fetch_one(env.database.pool())
        .await
        .unwrap();
    assert_eq!(
        object.as_deref(),
        Some(link.as_str()),
        "the event is filed under its link once resolved"
    );
    env.finish().await;
}

#[tokio::test]
async fn pair_form_without_link_is_parked() {
    let env = TestEnv::start().await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let event = envelope(
        "ErpLink",
        None,
        "unblocked",
        Some(json!({ "buyerId": buyer, "sellerId": "SEL-0000-0000" })),
    );
    env.publish(&event).await;
    env.wait_until_settled(1).await;
    assert_eq!(
        env.park_reason_of(id_of(&event)).await.as_deref(),
        Some("erp_link_not_found")
    );
    env.finish().await;
}

#[tokio::test]
async fn every_delivery_of_a_mixed_stream_has_one_outcome() {
    let mut env = TestEnv::start().await;
    env.start_worker().await;
    let (buyers, links) = env.pick(|data| {
        let buyers: Vec<String> = data
            .find_buyers(BuyerCase::Active)
            .take(20)
            .map(|buyer| buyer.id.clone())
            .collect();
        let links: Vec<String> = data
            .find_links(LinkCase::Blockable)
            .take(10)
            .map(|link| link.id.clone())
            .collect();
        (buyers, links)
    });

    let mut published = 0;
    let base = Utc::now();
    let mut last_target: HashMap<String, &str> = HashMap::new();
    for index in 0..200 {
        let at = base + chrono::Duration::milliseconds(index);
        let event = match index % 4 {
            0 | 1 => envelope_at(
                "Buyer",
                Some(&buyers[index as usize % 20]),
                "updated",
                None,
                at,
            ),
            _ => {
                let link = &links[index as usize % 10];
                let event_type = if (index / 10) % 2 == 0 {
                    "blocked"
                } else {
                    "unblocked"
                };
                last_target.insert(link.clone(), event_type);
                envelope_at("ErpLink", Some(link), event_type, None, at)
            }
        };
        env.publish(&event).await;
        published += 1;
        if index % 50 == 0 {
            env.publish(&event).await;
            published += 1;
        }
    }
    let counts = env.wait_until_settled(published).await;
    assert_eq!(counts.settled(), published, "{counts:?}");
    assert_eq!(counts.duplicate, 4);
    assert_eq!(counts.parked, 0);

    for (link, event_type) in &last_target {
        let expected = if *event_type == "blocked" {
            "Blocked"
        } else {
            "Active"
        };
        assert_eq!(
            link_status(&env, link),
            expected,
            "{link} follows its newest event"
        );
        assert_no_overlap(&attempt_steps(&env, link).await, link);
    }
    env.finish().await;
}
