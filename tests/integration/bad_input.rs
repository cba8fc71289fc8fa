//! Input that cannot become an event is dead-lettered with its reason, and the events
//! around it settle.

use erp_sync::simulator::BuyerCase;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{TestEnv, envelope, id_of};

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_consumption_continues() {
    let env = TestEnv::start().await;
    let (buyer, control_buyer) = env.pick(|data| {
        let mut buyers = data.find_buyers(BuyerCase::Active);
        (
            buyers.next().unwrap().id.clone(),
            buyers.next().unwrap().id.clone(),
        )
    });

    let mut numeric_id = envelope("Buyer", None, "updated", None);
    numeric_id["object"]["id"] = json!(12345);
    let mut extra_field = envelope("Buyer", Some(&buyer), "updated", None);
    extra_field["producer"] = json!({ "name": "erp", "version": 7 });
    let invoice = envelope("Invoice", Some("INV-1234-5678"), "created", None);
    let control = envelope("Buyer", Some(&control_buyer), "synchronizeRequested", None);

    env.publish_raw(b"not json", "accounts.buyer.updated").await;
    env.publish(&numeric_id).await;
    env.publish(&extra_field).await;
    env.publish(&invoice).await;
    env.publish_raw(b"", "accounts.buyer.updated").await;
    env.publish_raw(&[0xff, 0xfe], "accounts.buyer.updated")
        .await;
    env.publish(&control).await;

    let counts = env.wait_until_settled(7).await;
    assert_eq!(counts.dead_lettered, 5, "{counts:?}");
    assert_eq!(counts.applied, 2, "{counts:?}");
    assert_eq!(
        env.outcome_of(id_of(&extra_field)).await.as_deref(),
        Some("applied")
    );
    assert_eq!(
        env.outcome_of(id_of(&control)).await.as_deref(),
        Some("applied")
    );

    let recorded: Vec<String> = env
        .recorded_dead_letters()
        .await
        .into_iter()
        .map(|(reason, _, _)| reason)
        .collect();
    assert_eq!(
        recorded,
        vec![
            "malformed_json",
            "schema_mismatch",
            "unsupported_event",
            "malformed_json",
            "not_utf8"
        ]
    );

    let queued = env.drain_dead_letter_queue().await;
    let reasons: Vec<Option<String>> = queued.iter().map(|(reason, _)| reason.clone()).collect();
    assert_eq!(
        reasons,
        [
            "malformed_json",
            "schema_mismatch",
            "unsupported_event",
            "malformed_json",
            "not_utf8"
        ]
        .map(|reason| Some(reason.to_owned()))
    );
    assert_eq!(
        queued[0].1, b"not json",
        "the dead letter carries the original body"
    );

    let (_, size, sha256) = &env.recorded_dead_letters().await[4];
    assert_eq!(*size, 2);
    assert_eq!(sha256, &hex::encode(Sha256::digest([0xff, 0xfe])));

    let synchronizations = env.calls("/public/v1/accounts/buyers/*/synchronize");
    assert_eq!(
        synchronizations.len(),
        2,
        "only the two valid events call the platform"
    );
    assert!(
        env.worker_is_consuming(),
        "the consumer survived the bad input"
    );
    env.finish().await;
}

#[tokio::test]
async fn oversized_and_invalid_ids_are_dead_lettered() {
    let env = TestEnv::start_with(|setup| setup.config.amqp.max_message_bytes = 2048).await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let mut oversized = envelope("Buyer", Some(&buyer), "updated", None);
    oversized["padding"] = json!("x".repeat(4096));
    let wrong_prefix = envelope("Buyer", Some("SEL-1234-5678"), "updated", None);
    let short_id = envelope("Buyer", Some("BUY-12"), "updated", None);
    let link_created = envelope("ErpLink", Some("ERP-1234-5678-9012"), "created", None);
    let normal = envelope("Buyer", Some(&buyer), "updated", None);

    for message in [&oversized, &wrong_prefix, &short_id, &link_created, &normal] {
        env.publish(message).await;
    }
    let counts = env.wait_until_settled(5).await;
    assert_eq!(counts.dead_lettered, 4, "{counts:?}");
    assert_eq!(
        env.outcome_of(id_of(&normal)).await.as_deref(),
        Some("applied")
    );

    let recorded = env.recorded_dead_letters().await;
    let reasons: Vec<&str> = recorded
        .iter()
        .map(|(reason, _, _)| reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        vec!["too_large", "invalid_id", "invalid_id", "unsupported_event"]
    );

    let body_kept: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM dead_letters WHERE reason = 'too_large'")
            .fetch_one(env.database.pool())
            .await
            .unwrap();
    assert_eq!(body_kept, None, "a body over the limit is not stored");
    env.finish().await;
}
