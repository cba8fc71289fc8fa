//! The scenarios that run the real worker: ingest, end to end, latency, a slow
//! platform, and the end-to-end run on a long history.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::harness::{Bench, DATABASE, poll_until};

/// Events in the ingest run.
const INGEST_EVENTS: usize = 200_000;
/// Events, over as many distinct buyers, in the end-to-end run.
const END_TO_END_EVENTS: usize = 100_000;
/// Rate and length of the latency run.
const LATENCY_RATE: usize = 1_000;
const LATENCY_SECONDS: usize = 60;
/// Simulated platform latency and the number of calls in the slow-platform run.
const SLOW_LATENCY: Duration = Duration::from_millis(100);
const SLOW_CALLS: usize = 6_400;
/// Rows already in the tables in the history run.
const HISTORY_AUDIT_ROWS: i64 = 10_000_000;
const HISTORY_COMMANDS: i64 = 2_000_000;
/// Template database holding the history, built once and kept.
const HISTORY_TEMPLATE: &str = "erp_sync_bench_history";
/// Free disk the history run needs, in bytes: the template and its copy.
const HISTORY_DISK_BYTES: u64 = 12 * 1024 * 1024 * 1024;
/// Events settled among those received after the audit row `$1`.
const SETTLED_SINCE: &str = "SELECT (SELECT count(*) FROM audit WHERE id > $1 AND step = 'received') \
                                  - (SELECT count(*) FROM events WHERE outcome IS NULL)";
/// Events received after the audit row `$1`.
const RECEIVED_SINCE: &str = "SELECT count(*) FROM audit WHERE id > $1 AND step = 'received'";

/// Longest wait for any run to complete.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The result of a run that drains a backlog.
#[derive(Debug, Clone)]
pub struct Drain {
    pub events: usize,
    pub seconds: f64,
    pub rate: f64,
    pub peak_rss_bytes: u64,
    /// (seconds since the worker started, events done) samples.
    pub timeline: Vec<(f64, i64)>,
}

/// The result of the latency run, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub events: usize,
    pub rate: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub peak_rss_bytes: u64,
    pub samples: Vec<f64>,
}

/// The result of the slow-platform run.
#[derive(Debug, Clone)]
pub struct SlowPlatform {
    pub calls: usize,
    pub concurrency: usize,
    pub calls_per_second: f64,
    pub ideal: f64,
    pub peak_rss_bytes: u64,
}

/// Ingest: a preloaded backlog committed and acknowledged with dispatch disabled.
pub async fn ingest(bench: &Bench) -> anyhow::Result<Drain> {
    let events = bench.scaled(INGEST_EVENTS);
    let database = bench.fresh_database(None).await?;
    let link = bench.fresh_queues().await?;
    let bodies = (0..events).map(|index| bench.buyer_event(index)).collect();
    let preload = bench.preload(&link, bodies).await?;
    eprintln!(
        "preloaded {events} events in {:.1} s",
        preload.as_secs_f64()
    );

    let config = bench.config(DATABASE);
    let worker = bench
        .start_worker(
            &config,
            &[("ERP_SYNC_DISPATCH_ENABLED", "false".to_owned())],
        )
        .await?;
    let timeline = poll_until(
        &database,
        RECEIVED_SINCE,
        0,
        events as i64,
        worker.started,
        RUN_LIMIT,
    )
    .await?;
    let seconds = timeline
        .last()
        .map(|(seconds, _)| *seconds)
        .unwrap_or_default();
    let peak_rss_bytes = worker.stop().await?;
    link.close().await;
    database.close().await;
    Ok(Drain {
        events,
        seconds,
        rate: events as f64 / seconds,
        peak_rss_bytes,
        timeline,
    })
}

/// End to end: a preloaded backlog over distinct buyers, the simulator answering at
/// once, from the worker's start to the last event settled. With `history`, the
/// database is a copy of the history template.
pub async fn end_to_end(bench: &Bench, history: bool) -> anyhow::Result<Drain> {
    let events = bench.scaled(END_TO_END_EVENTS).min(bench.buyers.len());
    let database = bench
        .fresh_database(history.then_some(HISTORY_TEMPLATE))
        .await?;
    let link = bench.fresh_queues().await?;
    let mut simulator = bench.start_simulator().await?;
    let bodies = (0..events).map(|index| bench.buyer_event(index)).collect();
    let preload = bench.preload(&link, bodies).await?;
    eprintln!(
        "preloaded {events} events in {:.1} s",
        preload.as_secs_f64()
    );

    // Counting settled events must stay cheap on a table with millions of old rows:
    // new audit rows are found by id, unsettled events through their partial index.
    let first_new_audit: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM audit")
        .fetch_one(database.pool())
        .await?;
    let config = bench.config(DATABASE);
    let worker = bench.start_worker(&config, &[]).await?;
    let timeline = poll_until(
        &database,
        SETTLED_SINCE,
        first_new_audit,
        events as i64,
        worker.started,
        RUN_LIMIT,
    )
    .await?;
    let seconds = timeline
        .last()
        .map(|(seconds, _)| *seconds)
        .unwrap_or_default();
    let peak_rss_bytes = worker.stop().await?;
    let _ = simulator.kill().await;
    link.close().await;
    database.close().await;
    Ok(Drain {
        events,
        seconds,
        rate: events as f64 / seconds,
        peak_rss_bytes,
        timeline,
    })
}

/// Latency: a steady stream at `LATENCY_RATE` events per second, each to a distinct
/// buyer; the time from publishing an event to the simulator receiving its call.
pub async fn latency(bench: &Bench) -> anyhow::Result<Latency> {
    let events = (bench.scaled(LATENCY_RATE * LATENCY_SECONDS)).min(bench.buyers.len());
    let database = bench.fresh_database(None).await?;
    let link = bench.fresh_queues().await?;
    let mut simulator = bench.start_simulator().await?;
    let config = bench.config(DATABASE);
    let worker = bench.start_worker(&config, &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bench.clear_simulator().await?;

    let publisher = std::sync::Arc::new(link.publisher().await?);
    let exchange = config.amqp.exchange.clone();
    let mut published: HashMap<String, SystemTime> = HashMap::with_capacity(events);
    let mut confirms = Vec::with_capacity(events);
    let tick = Duration::from_millis(10);
    let per_tick = (LATENCY_RATE / 100).max(1);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut index = 0;
    while index < events {
        ticker.tick().await;
        for _ in 0..per_tick.min(events - index) {
            let buyer = bench.buyers[index].clone();
            let message = erp_sync::broker::OutboundMessage {
                routing_key: "accounts.buyer.updated".to_owned(),
                body: bench.buyer_event(index),
                ..Default::default()
            };
            published.insert(buyer, SystemTime::now());
            // Each publish runs on its own task, so it leaves at once and the pace of
            // the stream does not depend on the confirms.
            let publisher = publisher.clone();
            let exchange = exchange.clone();
            confirms.push(tokio::spawn(async move {
                publisher.publish_event(&exchange, &message).await
            }));
            index += 1;
        }
    }
    for confirm in confirms {
        confirm.await??;
    }

    poll_until(
        &database,
        SETTLED_SINCE,
        0,
        events as i64,
        Instant::now(),
        RUN_LIMIT,
    )
    .await?;
    let arrivals = bench.synchronize_arrivals().await?;
    let mut samples: Vec<f64> = arrivals
        .iter()
        .filter_map(|(at, path)| {
            let buyer = path.split('/').nth(5)?;
            let sent = published.get(buyer)?;
            let sent: chrono::DateTime<chrono::Utc> = (*sent).into();
            Some((*at - sent).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    anyhow::ensure!(
        !samples.is_empty(),
        "no latency sample: the simulator's request log has no matching call"
    );
    samples.sort_by(f64::total_cmp);
    let percentile = |share: f64| {
        samples[((samples.len() as f64 * share).ceil() as usize).clamp(1, samples.len()) - 1]
    };

    let result = Latency {
        events,
        rate: LATENCY_RATE,
        p50: percentile(0.50),
        p95: percentile(0.95),
        p99: percentile(0.99),
        max: *samples.last().unwrap_or(&0.0),
        peak_rss_bytes: worker.stop().await?,
        samples: samples.clone(),
    };
    let _ = simulator.kill().await;
    link.close().await;
    database.close().await;
    Ok(result)
}

/// Slow platform: every call takes `SLOW_LATENCY`; the rate of calls against the ideal
/// of the default concurrency divided by the latency.
pub async fn slow_platform(bench: &Bench) -> anyhow::Result<SlowPlatform> {
    let calls = bench.scaled(SLOW_CALLS).min(bench.buyers.len());
    let database = bench.fresh_database(None).await?;
    let link = bench.fresh_queues().await?;
    let mut simulator = bench.start_simulator().await?;
    let delay = humantime::format_duration(SLOW_LATENCY).to_string();
    bench
        .configure_simulator(json!({ "latency": { "distribution": "fixed", "delay": delay } }))
        .await?;
    let bodies = (0..calls).map(|index| bench.buyer_event(index)).collect();
    bench.preload(&link, bodies).await?;

    let config = bench.config(DATABASE);
    let concurrency = config.dispatch.concurrency;
    let worker = bench.start_worker(&config, &[]).await?;
    poll_until(
        &database,
        SETTLED_SINCE,
        0,
        calls as i64,
        worker.started,
        RUN_LIMIT,
    )
    .await?;
    let peak_rss_bytes = worker.stop().await?;

    let mut arrivals: Vec<chrono::DateTime<chrono::Utc>> = bench
        .synchronize_arrivals()
        .await?
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    arrivals.sort();
    // The calls arrive from the first to the last; the last one takes one more latency.
    let span = (*arrivals.last().unwrap() - arrivals[0])
        .num_microseconds()
        .unwrap_or(1) as f64
        / 1_000_000.0;
    let calls_per_second = arrivals.len() as f64 / (span + SLOW_LATENCY.as_secs_f64());
    let _ = simulator.kill().await;
    link.close().await;
    database.close().await;
    Ok(SlowPlatform {
        calls,
        concurrency,
        calls_per_second,
        ideal: concurrency as f64 / SLOW_LATENCY.as_secs_f64(),
        peak_rss_bytes,
    })
}

/// History: the end-to-end run on a copy of a database that already holds 10 million
/// audit rows and 2 million settled commands. Skipped, with the reason, when the disk
/// is too small.
pub async fn history(bench: &Bench) -> anyhow::Result<Option<Drain>> {
    let free = free_disk_bytes("/var/lib/postgresql");
    if free < HISTORY_DISK_BYTES {
        eprintln!(
            "history skipped: {:.1} GiB free, {:.0} GiB needed",
            free as f64 / 1e9,
            HISTORY_DISK_BYTES as f64 / 1e9
        );
        return Ok(None);
    }
    build_history_template(bench).await?;
    end_to_end(bench, true).await.map(Some)
}

/// Builds the template database once: settled events and commands, and the audit rows
/// the worker writes for them, made with `generate_series`.
async fn build_history_template(bench: &Bench) -> anyhow::Result<()> {
    let server = crate::harness::DATABASE_SERVER;
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(HISTORY_TEMPLATE)
            .fetch_one(&admin)
            .await?;
    if exists {
        let template = sqlx::PgPool::connect(&format!("{server}/{HISTORY_TEMPLATE}")).await?;
        let complete: Option<i64> = sqlx::query_scalar("SELECT rows FROM bench_history_complete")
            .fetch_optional(&template)
            .await
            .ok()
            .flatten();
        template.close().await;
        if complete == Some(HISTORY_AUDIT_ROWS) {
            eprintln!("reusing the history template {HISTORY_TEMPLATE}");
            admin.close().await;
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE \"{HISTORY_TEMPLATE}\" WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
    }
    admin.close().await;

    eprintln!(
        "building the history template {HISTORY_TEMPLATE}: {HISTORY_COMMANDS} commands, {HISTORY_AUDIT_ROWS} audit rows"
    );
    let started = Instant::now();
    let mut config = bench.config(HISTORY_TEMPLATE);
    config.database.statement_timeout = Duration::from_secs(3600);
    erp_sync::storage::Database::migrate(&config.database).await?;
    let pool = sqlx::PgPool::connect(&format!("{server}/{HISTORY_TEMPLATE}")).await?;
    let statements = [
        "INSERT INTO events (id, object_type, object_id, event_type, enqueue_time, routing_key, envelope, outcome, settled_at, received_at) \
         SELECT gen_random_uuid(), 'Buyer', 'BUY-' || lpad((n % 10000)::text, 4, '0') || '-' || lpad((n / 10000 % 10000)::text, 4, '0'), \
                'updated', now() - interval '30 days' + n * interval '1 second', 'accounts.buyer.updated', \
                '{\"history\": true}'::jsonb, 'applied', now() - interval '30 days' + n * interval '1 second', \
                now() - interval '30 days' + n * interval '1 second' \
         FROM generate_series(1, 2000000) AS n",
        "INSERT INTO commands (kind, object_key, object_id, spec, state, enqueue_time, attempts, next_attempt_at, \
                               idempotency_key, created_at, updated_at, finished_at) \
         SELECT 'synchronize_buyer', 'buyer:' || object_id, object_id, \
                jsonb_build_object('kind', 'synchronize_buyer', 'buyer', object_id), 'applied', enqueue_time, 1, \
                enqueue_time, gen_random_uuid(), enqueue_time, enqueue_time, enqueue_time \
         FROM events",
        "INSERT INTO command_events (command_id, event_id) \
         SELECT c.id, e.id FROM (SELECT id, row_number() OVER () AS n FROM commands) c \
         JOIN (SELECT id, row_number() OVER () AS n FROM events) e USING (n)",
        "INSERT INTO audit (at, step, event_id, command_id, object_id, attempt, http_status, duration_ms, detail) \
         SELECT e.received_at, step, CASE WHEN step IN ('received', 'command_planned') THEN e.id END, \
                CASE WHEN step <> 'received' THEN ce.command_id END, e.object_id, \
                CASE WHEN step LIKE 'attempt%' THEN 1 END, CASE WHEN step = 'attempt_finished' THEN 200 END, \
                CASE WHEN step = 'attempt_finished' THEN 12.5 END, '{}'::jsonb \
         FROM events e JOIN command_events ce ON ce.event_id = e.id \
         CROSS JOIN (VALUES ('received'), ('command_planned'), ('attempt_started'), ('attempt_finished'), ('applied')) AS s(step)",
        "CREATE TABLE bench_history_complete (rows bigint NOT NULL)",
        "INSERT INTO bench_history_complete SELECT count(*) FROM audit",
        "VACUUM ANALYZE",
    ];
    for statement in statements {
        sqlx::query(statement).execute(&pool).await?;
    }
    pool.close().await;
    eprintln!(
        "built the history template in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Free bytes on the file system of `path`, from `df`.
fn free_disk_bytes(path: &str) -> u64 {
    std::process::Command::new("df")
        .args(["--output=avail", "-B1", path])
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .nth(1)
                .and_then(|line| line.trim().parse().ok())
        })
        .unwrap_or(0)
}
