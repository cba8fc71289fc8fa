//! The `erp-sync` binary: exit codes, configuration errors, and secrets kept out of
//! logs and the database.

use std::process::Stdio;
use std::time::Duration;

use erp_sync::simulator::BuyerCase;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};

use crate::support::{TestEnv, envelope, test_config};

const BINARY: &str = env!("CARGO_BIN_EXE_erp-sync");

/// Environment that points the binary at the test's database, queues and simulator.
pub fn pipeline_env(env: &TestEnv, token: &str) -> Vec<(String, String)> {
    let amqp = &env.config.amqp;
    vec![
        (
            "ERP_SYNC_DATABASE_URL".into(),
            env.config.database.url.expose().into(),
        ),
        ("ERP_SYNC_AMQP_URL".into(), amqp.url.expose().into()),
        ("ERP_SYNC_AMQP_EXCHANGE".into(), amqp.exchange.clone()),
        ("ERP_SYNC_AMQP_QUEUE".into(), amqp.queue.clone()),
        (
            "ERP_SYNC_AMQP_DEAD_LETTER_EXCHANGE".into(),
            amqp.dead_letter_exchange.clone(),
        ),
        (
            "ERP_SYNC_AMQP_DEAD_LETTER_QUEUE".into(),
            amqp.dead_letter_queue.clone(),
        ),
        (
            "ERP_SYNC_PLATFORM_URL".into(),
            format!("{}/public/v1", env.simulator.base_url()),
        ),
        ("ERP_SYNC_PLATFORM_TOKEN".into(), token.into()),
        ("ERP_SYNC_TELEMETRY_LISTEN".into(), "127.0.0.1:0".into()),
        ("RUST_LOG".into(), "debug".into()),
    ]
}

pub fn command(vars: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub async fn output_of(mut child: Child) -> (Option<i32>, String) {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let mut errors = String::new();
    let (_, _, status) = tokio::join!(
        stdout.read_to_string(&mut text),
        stderr.read_to_string(&mut errors),
        child.wait()
    );
    (status.unwrap().code(), text + &errors)
}

pub fn terminate(child: &Child) {
    let pid = child.id().expect("the process runs").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
}

#[tokio::test]
async fn token_never_reaches_logs_or_database() {
    let token = format!("idt:TKN-9999-0001:{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::start_with(|setup| {
        setup.start_worker = false;
        setup.simulator.tokens.push(token.clone());
    })
    .await;
    let buyer = env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone());

    let child = command(&pipeline_env(&env, &token), &["run"])
        .spawn()
        .expect("erp-sync starts");
    env.publish(&envelope("Buyer", Some(&buyer), "updated", None))
        .await;
    env.publish(&envelope("Buyer", Some("BUY-0000-0000"), "updated", None))
        .await;
    env.wait_until_settled(2).await;

    terminate(&child);
    let (code, output) = tokio::time::timeout(Duration::from_secs(30), output_of(child))
        .await
        .expect("erp-sync stops");
    assert_eq!(code, Some(0), "SIGTERM ends the worker cleanly:\n{output}");
    assert!(
        output.contains("event settled"),
        "the worker logged its work:\n{output}"
    );
    let secret = token.rsplit(':').next().unwrap();
    assert!(!output.contains(secret), "the token appeared in the logs");

    let stored: String = sqlx::query_scalar(
        "SELECT concat_ws(' ', (SELECT string_agg(t::text, ' ') FROM audit t), \
                               (SELECT string_agg(t::text, ' ') FROM commands t), \
                               (SELECT string_agg(t::text, ' ') FROM events t))",
    )
    .fetch_one(env.database.pool())
    .await
    .unwrap();
    assert!(
        !stored.contains(secret),
        "the token was stored in the database"
    );
    env.finish().await;
}

#[tokio::test]
async fn invalid_setting_exits_with_config_code() {
    let vars = vec![("ERP_SYNC_AMQP_PREFETCH".to_owned(), "0".to_owned())];
    let child = command(&vars, &["run"]).spawn().unwrap();
    let (code, output) = output_of(child).await;
    assert_eq!(code, Some(3), "{output}");
    assert!(
        output.contains("amqp.prefetch"),
        "the message names the key: {output}"
    );
    assert!(
        output.contains("ERP_SYNC_AMQP_PREFETCH"),
        "the message names the variable: {output}"
    );
}

#[tokio::test]
async fn missing_database_exits_with_schema_code() {
    let name = format!("erp_sync_missing_{}", uuid::Uuid::new_v4().simple());
    let config = test_config(&name);
    let vars = vec![(
        "ERP_SYNC_DATABASE_URL".to_owned(),
        config.database.url.expose().to_owned(),
    )];
    let child = command(&vars, &["run"]).spawn().unwrap();
    let (code, output) = output_of(child).await;
    assert_eq!(code, Some(4), "{output}");
    assert!(
        output.contains("erp-sync migrate"),
        "the message says how to fix it: {output}"
    );
}

#[tokio::test]
async fn topology_conflict_exits_with_topology_code() {
    let env = TestEnv::start_with(|setup| setup.start_worker = false).await;
    let conflicting = format!("{}-classic", env.config.amqp.queue);
    let connection = lapin::Connection::connect(
        crate::support::BROKER_URL,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            conflicting.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();

    let mut vars = pipeline_env(&env, erp_sync::simulator::DEFAULT_TOKEN);
    vars.push(("ERP_SYNC_AMQP_QUEUE".into(), conflicting.clone()));
    let child = command(&vars, &["run"]).spawn().unwrap();
    let (code, output) = tokio::time::timeout(Duration::from_secs(30), output_of(child))
        .await
        .unwrap();
    assert_eq!(code, Some(5), "{output}");
    assert!(
        output.contains(&conflicting),
        "the message names the queue: {output}"
    );

    let _ = channel
        .queue_delete(conflicting.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    env.cleanup().await;
}

#[tokio::test]
async fn unsupported_otlp_protocol_exits_with_config_code() {
    let vars = vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://127.0.0.1:4317".to_owned(),
        ),
    ];
    let child = command(&vars, &["run"]).spawn().unwrap();
    let (code, output) = output_of(child).await;
    assert_eq!(code, Some(3), "{output}");
    assert!(
        output.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "the message names the variable: {output}"
    );
    assert!(
        output.contains("http/protobuf"),
        "the message names the supported protocol: {output}"
    );
}

#[tokio::test]
async fn health_address_in_use_fails_start_up() {
    let env = TestEnv::start_with(|setup| setup.start_worker = false).await;
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();

    let mut vars = pipeline_env(&env, erp_sync::simulator::DEFAULT_TOKEN);
    vars.retain(|(name, _)| name != "ERP_SYNC_TELEMETRY_LISTEN");
    vars.push(("ERP_SYNC_TELEMETRY_LISTEN".into(), address.clone()));
    let child = command(&vars, &["run"]).spawn().unwrap();
    let (code, output) = tokio::time::timeout(Duration::from_secs(30), output_of(child))
        .await
        .expect("erp-sync exits");
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&address),
        "the message names the address: {output}"
    );
    assert!(
        output.contains("ERP_SYNC_TELEMETRY_LISTEN"),
        "the message says how to change it: {output}"
    );
    drop(occupied);
    env.cleanup().await;
}
