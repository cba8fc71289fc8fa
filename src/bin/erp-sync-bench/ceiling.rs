//! The ceiling erp-sync is measured against, in the same run. It has four parts: how
//! fast a minimal lapin consumer drains a preloaded quorum queue, how fast PostgreSQL
//! takes the rows erp-sync writes per event in batches, how long one commit takes, and
//! how long a quorum queue takes to deliver a message to a waiting consumer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
/// Messages of the broker latency run, published at `LATENCY_RATE` per second.
const LATENCY_MESSAGES: usize = 5_000;
/// Publishing rate of the broker latency run, as in the latency scenario.
const LATENCY_RATE: usize = 1_000;

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
    /// Publish-to-delivery latency of a quorum queue at `LATENCY_RATE` messages per
    /// second: median and 99th percentile in milliseconds, and the sample count.
    pub broker_latency: (f64, f64, usize),
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
    let broker_latency = broker_latency(bench.scaled(LATENCY_MESSAGES)).await?;
    eprintln!(
        "broker latency: p50 {:.1} ms, p99 {:.1} ms",
        broker_latency.0, broker_latency.1
    );
    Ok(Ceiling {
        messages,
        consume_rate,
        insert_rate,
        fdatasync_ops,
        fdatasync_usecs,
        broker_latency,
    })
}

/// Declares a quorum queue of its own, named `queue`, after deleting any left over.
async fn fresh_quorum_queue(channel: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
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
    Ok(())
}

/// Starts a consumer named `tag` on `queue`, on a channel of its own with a prefetch
/// of `RAW_PREFETCH`.
async fn bare_consumer(
    connection: &lapin::Connection,
    queue: &str,
    tag: &str,
) -> anyhow::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

/// Microseconds since the Unix epoch, the clock both ends of the latency run share.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_micros() as u64)
        .unwrap_or(0)
}

/// Publishes persistent messages with confirms at `LATENCY_RATE` per second to a
/// quorum queue that a bare consumer is waiting on, each carrying its publishing
/// time, and returns the median and 99th percentile of publish to delivery.
async fn broker_latency(messages: usize) -> anyhow::Result<(f64, f64, usize)> {
    let queue = "erp-sync-bench.latency";
    let connection =
        lapin::Connection::connect(BROKER_URL, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    fresh_quorum_queue(&channel, queue).await?;

    let mut consumer = bare_consumer(&connection, queue, "latency").await?;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(messages);
        while samples.len() < messages {
            let Some(delivery) = consumer.next().await else {
                break;
            };
            let delivery = delivery?;
            let arrived = now_micros();
            let sent = delivery
                .data
                .get(..8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(arrived);
            samples.push(arrived.saturating_sub(sent) as f64 / 1000.0);
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        anyhow::Ok(samples)
    });

    let publisher = std::sync::Arc::new(connection.create_channel().await?);
    publisher
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let per_tick = LATENCY_RATE / 100;
    let mut confirms = Vec::with_capacity(messages);
    let mut sent = 0;
    while sent < messages {
        ticker.tick().await;
        for _ in 0..per_tick.min(messages - sent) {
            let publisher = publisher.clone();
            confirms.push(tokio::spawn(async move {
                publisher
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        lapin::options::BasicPublishOptions::default(),
                        &now_micros().to_be_bytes(),
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
            }));
            sent += 1;
        }
    }
    for confirm in confirms {
        confirm.await??;
    }
    let mut samples = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .map_err(|_| anyhow::anyhow!("the latency consumer did not receive every message"))???;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;

    anyhow::ensure!(!samples.is_empty(), "the latency consumer received nothing");
    samples.sort_by(f64::total_cmp);
    let percentile = |share: f64| {
        samples[((samples.len() as f64 * share).ceil() as usize).clamp(1, samples.len()) - 1]
    };
    Ok((percentile(0.50), percentile(0.99), samples.len()))
}

/// Preloads a quorum queue of its own and drains it with a bare lapin consumer that
/// acknowledges every `RAW_ACK_EVERY` deliveries at once.
async fn raw_consume(bench: &Bench, messages: usize) -> anyhow::Result<f64> {
    let queue = "erp-sync-bench.raw";
    let connection =
        lapin::Connection::connect(BROKER_URL, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    fresh_quorum_queue(&channel, queue).await?;

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

    let mut consumer = bare_consumer(&connection, queue, "raw").await?;
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
