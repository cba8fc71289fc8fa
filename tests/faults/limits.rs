//! Input limits: a message far over `amqp.max_message_bytes` is dead-lettered once as
//! `too_large`, by its length and before any parsing, without costing the worker its
//! connection or much memory.

use std::time::Duration;

use erp_sync::broker::REASON_HEADER;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde_json::json;

use crate::support::checks::assert_settled_exactly_once;
use crate::support::{FaultEnv, Resends, envelope};

/// Size limit of the worker in this test: 1 MiB.
const LIMIT: usize = 1024 * 1024;

/// Most resident memory the worker may reach, in KiB (200 MiB).
const MAX_PEAK_RSS_KIB: u64 = 200 * 1024;

/// Builds a buyer event padded with a `data.note` so its body is about `size` bytes.
fn padded_event(buyer: &str, size: usize) -> serde_json::Value {
    let mut event = envelope("Buyer", buyer, "updated", None);
    let overhead = event.to_string().len() + r#","data":{"note":""}"#.len();
    event["data"] = json!({ "note": "x".repeat(size.saturating_sub(overhead)) });
    event
}

/// Takes every message from a queue: (reason header, body length).
async fn drain(url: &str, queue: &str) -> Vec<(Option<String>, usize)> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("the private broker accepts connections");
    let channel = connection.create_channel().await.expect("a channel opens");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(REASON_HEADER).cloned())
            .and_then(|value| match value {
                AMQPValue::LongString(text) => Some(text.to_string()),
                _ => None,
            });
        messages.push((reason, message.delivery.data.len()));
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    let _ = connection.close(200, "drained".into()).await;
    messages
}

/// With a 1 MiB limit: a 20 MiB event is dead-lettered once as `too_large`, a 900 KiB
/// event and a normal one settle, the connection stays up and the worker stays under
/// 200 MiB of resident memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_dead_lettered_once() {
    let mut env = FaultEnv::start().await;
    env.set("ERP_SYNC_AMQP_MAX_MESSAGE_BYTES", LIMIT.to_string());
    let worker = env.start_worker().await;
    let buyers = env.active_buyers(3);
    let huge = padded_event(&buyers[0], 20 * LIMIT);
    let large = padded_event(&buyers[1], 900 * 1024);
    let normal = envelope("Buyer", &buyers[2], "updated", None);
    let huge_size = huge.to_string().len();
    assert!(huge_size <= 20 * LIMIT);
    assert!(huge_size > 20 * LIMIT - 100);

    for event in [&huge, &large, &normal] {
        env.producer.publish(event).await;
    }
    let settled = [large.clone(), normal.clone()];
    env.wait_until_settled(&settled, Duration::from_secs(30))
        .await;

    let peak_kib = worker.peak_rss_kib().expect("the worker runs");
    eprintln!(
        "peak resident memory of the worker: {} MiB",
        peak_kib / 1024
    );
    assert!(
        peak_kib < MAX_PEAK_RSS_KIB,
        "the worker's peak resident memory was {} MiB",
        peak_kib / 1024
    );

    let db = env.db().await;
    let dead_letters: Vec<(String, i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT reason, size_bytes, body FROM dead_letters")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(dead_letters.len(), 1, "one dead letter is recorded");
    let (reason, size, body) = &dead_letters[0];
    assert_eq!(reason, "too_large");
    assert_eq!(*size as usize, huge_size);
    assert!(body.is_none(), "a body over the limit is not stored");

    let dead_letter_queue = env.producer.config().dead_letter_queue.clone();
    let published = drain(&env.broker.url(), &dead_letter_queue).await;
    assert_eq!(
        published,
        vec![(Some("too_large".to_owned()), huge_size)],
        "the dead-letter queue holds the message once, whole"
    );

    let log = worker.log();
    assert_eq!(
        log.count("ERROR", "RabbitMQ consumer lost; reconnecting"),
        0,
        "the connection stayed up"
    );
    assert_eq!(log.count("INFO", "consuming events"), 1);
    assert_settled_exactly_once(&env, &settled, Resends::Never).await;
}
