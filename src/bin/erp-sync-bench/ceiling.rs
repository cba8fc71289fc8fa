//! The ceiling erp-sync is measured against, in the same run: how fast a minimal lapin
//! consumer drains a preloaded quorum queue, how fast PostgreSQL takes the rows erp-sync
//! writes per event in batches, and how long one commit takes.

use std::time::Instant;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{BROKER_URL, Bench};

/// Messages in the raw consume and insert runs.
const MESSAGES: usize = 200_000;
/// Prefetch of the raw consumer.
const RAW_PREFETCH: u16 = 2_000;
/// Deliveries acknowledged with one multiple ack by the raw consumer.
const RAW_ACK_EVERY: usize = 500;
/// Rows per transaction in the raw insert run, the worker's default batch size.
const INSERT_BATCH: usize = 200;

/// The measured ceiling.
#[derive(Debug, Clone)]
pub struct Ceiling {
    pub messages: usize,
    /// Raw consume rate, messages per second.
    pub consume_rate: f64,
    /// Raw insert rate of erp-sync's rows, events per second.
    pub insert_rate: f64,
    /// `pg_test_fsync`: fdatasync of one 8 kB write, operations per second and
    /// microseconds per operation, as PostgreSQL's default `wal_sync_method` on Linux.
    pub fdatasync_ops: Option<f64>,
    pub fdatasync_usecs: Option<f64>,
}

impl Ceiling {
    /// The lower of the two rates, which bounds ingest.
    pub fn lower(&self) -> f64 {
        self.consume_rate.min(self.insert_rate)
    }
}

pub async fn measure(bench: &Bench) -> anyhow::Result<Ceiling> {
    let messages = bench.scaled(MESSAGES);
    let consume_rate = raw_consume(bench, messages).await?;
    eprintln!("raw consume: {consume_rate:.0} messages/s");
    let insert_rate = raw_insert(bench, messages).await?;
    eprintln!("raw insert: {insert_rate:.0} events/s");
    let (fdatasync_ops, fdatasync_usecs) = fsync_latency().await;
    Ok(Ceiling {
        messages,
        consume_rate,
        insert_rate,
        fdatasync_ops,
        fdatasync_usecs,
    })
}

/// Preloads a quorum queue of its own and drains it with a bare lapin consumer that
/// acknowledges every `RAW_ACK_EVERY` deliveries at once.
async fn raw_consume(bench: &Bench, messages: usize) -> anyhow::Result<f64> {
    let queue = "erp-sync-bench.raw";
    let connection =
        lapin::Connection::connect(BROKER_URL, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;

    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let bodies: Vec<Vec<u8>> = (0..messages)
        .map(|index| bench.buyer_event(index))
        .collect();
    let mut confirms = futures::stream::iter(bodies.iter())
        .map(|body| {
            let publisher = &publisher;
            async move {
                publisher
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        lapin::options::BasicPublishOptions::default(),
                        body,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
            }
        })
        .buffer_unordered(2_000);
    while let Some(confirm) = confirms.next().await {
        confirm?;
    }

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < messages {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the raw consumer was cancelled"))??;
        received += 1;
        if received % RAW_ACK_EVERY == 0 || received == messages {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    Ok(rate)
}

/// Inserts the rows erp-sync writes for a new event that plans one command (the event,
/// the command, their link and two audit rows) in transactions of `INSERT_BATCH`
/// events, with the same unnest statements and no other work.
async fn raw_insert(bench: &Bench, events: usize) -> anyhow::Result<f64> {
    let database = bench.fresh_database(None).await?;
    let pool = database.pool();
    let started = Instant::now();
    for batch_start in (0..events).step_by(INSERT_BATCH) {
        let size = INSERT_BATCH.min(events - batch_start);
        let ids: Vec<Uuid> = (0..size).map(|_| Uuid::new_v4()).collect();
        let buyers: Vec<String> = (batch_start..batch_start + size)
            .map(|index| bench.buyers[index % bench.buyers.len()].clone())
            .collect();
        let keys: Vec<String> = buyers
            .iter()
            .map(|buyer| format!("buyer:{buyer}"))
            .collect();
        let envelopes: Vec<serde_json::Value> = ids
            .iter()
            .zip(&buyers)
            .map(|(id, buyer)| json!({ "id": id, "object": { "id": buyer, "objectType": "Buyer" }, "details": { "eventType": "updated" } }))
            .collect();
        let specs: Vec<serde_json::Value> = buyers
            .iter()
            .map(|buyer| json!({ "kind": "synchronize_buyer", "buyer": buyer }))
            .collect();
        let idempotency: Vec<Uuid> = (0..size).map(|_| Uuid::new_v4()).collect();

        let mut transaction = pool.begin().await?;
        sqlx::query(
            "INSERT INTO events (id, object_type, object_id, event_type, enqueue_time, routing_key, envelope) \
             SELECT id, 'Buyer', object_id, 'updated', now(), 'accounts.buyer.updated', envelope \
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS u(id, object_id, envelope)",
        )
        .bind(&ids)
        .bind(&buyers)
        .bind(&envelopes)
        .execute(&mut *transaction)
        .await?;
        let command_ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO commands (kind, object_key, object_id, spec, enqueue_time, idempotency_key) \
             SELECT 'synchronize_buyer', object_key, object_id, spec, now(), key \
             FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::uuid[]) AS u(object_key, object_id, spec, key) \
             RETURNING id",
        )
        .bind(&keys)
        .bind(&buyers)
        .bind(&specs)
        .bind(&idempotency)
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query("INSERT INTO command_events (command_id, event_id) SELECT * FROM unnest($1::int8[], $2::uuid[])")
            .bind(&command_ids)
            .bind(&ids)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "INSERT INTO audit (step, event_id, command_id, object_id, detail) \
             SELECT step, event_id, command_id, object_id, detail \
             FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::jsonb[]) AS u(event_id, command_id, object_id, detail) \
             CROSS JOIN (VALUES ('received'), ('command_planned')) AS steps(step)",
        )
        .bind(&ids)
        .bind(&command_ids)
        .bind(&buyers)
        .bind(&specs)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    database.close().await;
    Ok(rate)
}

/// Runs `pg_test_fsync` for one second per method on the disk of PostgreSQL's data and
/// reads the fdatasync figures.
async fn fsync_latency() -> (Option<f64>, Option<f64>) {
    let program = "/usr/lib/postgresql/15/bin/pg_test_fsync";
    let file = "/var/lib/postgresql/erp-sync-bench-fsync.out";
    let output = tokio::process::Command::new(program)
        .args(["-s", "1", "-f", file])
        .output()
        .await;
    let _ = std::fs::remove_file(file);
    let Ok(output) = output else {
        eprintln!("{program} is not available; commit latency not measured");
        return (None, None);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    // The first "fdatasync" line is in the section "one 8kB write".
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with("fdatasync"));
    let numbers: Vec<f64> = line
        .map(|line| {
            line.split_whitespace()
                .filter_map(|word| word.parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default();
    match numbers.as_slice() {
        [ops, usecs, ..] => (Some(*ops), Some(*usecs)),
        _ => (None, None),
    }
}
