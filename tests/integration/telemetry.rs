//! Traces, metrics and the health endpoints of a worker running in-process, with the
//! spans exported over OTLP to a collector in the test.
//!
//! Each test installs the process's telemetry, which can happen once per process; the
//! test runner (cargo-nextest) runs every test in a process of its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use erp_sync::broker::OutboundMessage;
use erp_sync::config::Config;
use erp_sync::simulator::{BuyerCase, Fault, FaultRule, RequestFilter};
use erp_sync::telemetry::{Telemetry, TelemetrySettings};
use opentelemetry_semantic_conventions::attribute as semconv;
use serde_json::Value;
use uuid::Uuid;

use crate::collector::{CollectedSpan, Collector, STATUS_ERROR, kind};
use crate::proxy::TcpProxy;
use crate::support::{TestEnv, envelope, http_get, id_of, wait_until};

/// A producer's trace context, as a publisher would put it in the AMQP headers.
const PRODUCER_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PRODUCER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN_ID: &str = "00f067aa0ba902b7";

/// The path of the dashboard, from the package root.
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");

/// Installs telemetry for this test process, exporting to `collector_url` if given.
fn install_telemetry(collector_url: Option<&str>) -> Telemetry {
    let mut config = Config::defaults();
    if let Some(url) = collector_url {
        config.telemetry.otlp_endpoint = url.to_owned();
    }
    Telemetry::install(TelemetrySettings {
        log: &config.log,
        telemetry: &config.telemetry,
        default_filter: "info",
        export: true,
    })
    .expect("telemetry installs")
}

/// Exports what is queued, then returns the collector's spans of `trace_id` once
/// `complete` holds for them.
async fn spans_of_trace(
    telemetry: &std::sync::Arc<Telemetry>,
    collector: &Collector,
    trace_id: &str,
    complete: impl Fn(&[CollectedSpan]) -> bool,
) -> Vec<CollectedSpan> {
    wait_until("the collector has the whole trace", || {
        let telemetry = telemetry.clone();
        let spans = trace_spans(collector, trace_id);
        let done = complete(&spans);
        async move {
            if !done {
                tokio::task::spawn_blocking(move || telemetry.force_flush())
                    .await
                    .unwrap();
            }
            done
        }
    })
    .await;
    trace_spans(collector, trace_id)
}

fn trace_spans(collector: &Collector, trace_id: &str) -> Vec<CollectedSpan> {
    collector
        .spans()
        .into_iter()
        .filter(|span| span.trace_id == trace_id)
        .collect()
}

fn of_kind(spans: &[CollectedSpan], kind: i32) -> Vec<CollectedSpan> {
    spans
        .iter()
        .filter(|span| span.kind == kind)
        .cloned()
        .collect()
}

fn attempts_of(spans: &[CollectedSpan]) -> Vec<CollectedSpan> {
    let mut attempts: Vec<CollectedSpan> = spans
        .iter()
        .filter(|span| span.kind == kind::INTERNAL && span.name.starts_with("attempt "))
        .cloned()
        .collect();
    attempts.sort_by_key(|span| span.attribute("attempt").unwrap_or_default().to_owned());
    attempts
}

/// Splits a W3C `traceparent` into its trace id and parent span id.
fn traceparent_ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn synchronize_path(buyer: &str) -> String {
    format!("/public/v1/accounts/buyers/{buyer}/synchronize")
}

fn active_buyer(env: &TestEnv) -> String {
    env.pick(|data| data.find_buyer(BuyerCase::Active).unwrap().id.clone())
}

/// Publishes an envelope with trace headers.
async fn publish_traced(env: &TestEnv, envelope: &Value, traceparent: Option<&str>) {
    let routing_key = erp_sync::event::routing_key_for(
        envelope["object"]["objectType"].as_str().unwrap(),
        envelope["details"]["eventType"].as_str().unwrap(),
    )
    .unwrap();
    env.publish_message(OutboundMessage {
        routing_key,
        body: envelope.to_string().into_bytes(),
        message_id: Some(id_of(envelope).to_string()),
        traceparent: traceparent.map(str::to_owned),
        tracestate: traceparent.map(|_| "vendor=opaque".to_owned()),
    })
    .await;
}

/// Reads the trace ids of every audit row about an event and its commands.
async fn audit_trace_ids(env: &TestEnv, event_id: Uuid) -> Vec<Option<String>> {
    sqlx::query_scalar(
        "SELECT trace_id FROM audit \
         WHERE event_id = $1 OR command_id IN (SELECT command_id FROM command_events WHERE event_id = $1) \
         ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(env.database.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn delivery_and_retry_share_one_trace() {
    let collector = Collector::start().await;
    let telemetry = std::sync::Arc::new(install_telemetry(Some(&collector.url)));
    let env = TestEnv::start().await;
    let buyer = active_buyer(&env);
    let path = synchronize_path(&buyer);
    env.simulator
        .control()
        .add_fault(FaultRule::new(path.clone(), Fault::status(503)).times(1))
        .unwrap();

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    let event_id = id_of(&event);
    publish_traced(&env, &event, Some(PRODUCER_TRACEPARENT)).await;
    env.wait_until_settled(1).await;

    let calls = env.calls(path.clone());
    assert_eq!(calls.len(), 2, "one failed call and its retry");
    let sent: Vec<(String, String)> = calls
        .iter()
        .map(|call| traceparent_ids(call.header("traceparent").expect("a traceparent header")))
        .collect();
    for (trace_id, _) in &sent {
        assert_eq!(
            trace_id, PRODUCER_TRACE_ID,
            "the platform saw the producer's trace"
        );
    }
    for call in &calls {
        assert_eq!(call.header("tracestate"), Some("vendor=opaque"));
    }

    let spans = spans_of_trace(&telemetry, &collector, PRODUCER_TRACE_ID, |spans| {
        of_kind(spans, kind::CONSUMER).len() == 1
            && attempts_of(spans).len() == 2
            && of_kind(spans, kind::CLIENT).len() == 2
    })
    .await;

    let delivery = &of_kind(&spans, kind::CONSUMER)[0];
    assert_eq!(
        delivery.parent_span_id, PRODUCER_SPAN_ID,
        "the producer's span is the parent"
    );
    assert_eq!(
        delivery.name,
        format!("process {}", env.config.amqp.exchange)
    );
    assert_eq!(delivery.service_name.as_deref(), Some("erp-sync"));
    assert_eq!(
        delivery.attribute(semconv::MESSAGING_SYSTEM),
        Some("rabbitmq")
    );
    assert_eq!(
        delivery.attribute(semconv::MESSAGING_DESTINATION_NAME),
        Some(env.config.amqp.exchange.as_str())
    );
    assert_eq!(
        delivery.attribute(semconv::MESSAGING_MESSAGE_ID),
        Some(event_id.to_string().as_str())
    );
    assert_eq!(
        delivery.attribute("event.id"),
        Some(event_id.to_string().as_str())
    );
    assert_eq!(delivery.attribute("object.id"), Some(buyer.as_str()));

    let attempts = attempts_of(&spans);
    for (number, attempt) in attempts.iter().enumerate() {
        assert_eq!(
            attempt.parent_span_id, delivery.span_id,
            "each attempt descends from the delivery"
        );
        assert_eq!(
            attempt.attribute("attempt"),
            Some((number + 1).to_string().as_str())
        );
        assert_eq!(attempt.attribute("object.id"), Some(buyer.as_str()));
        assert_eq!(
            attempt.attribute("event.id"),
            Some(event_id.to_string().as_str())
        );
        assert!(attempt.attribute("command.id").is_some());
    }
    assert_eq!(
        attempts[0].attribute("command.id"),
        attempts[1].attribute("command.id")
    );
    assert_eq!(
        attempts[0].attribute("erp_sync.attempt.result"),
        Some("retry")
    );
    assert_eq!(attempts[0].attribute(semconv::ERROR_TYPE), Some("503"));
    assert_eq!(attempts[0].status_code, STATUS_ERROR);
    assert_eq!(
        attempts[1].attribute("erp_sync.attempt.result"),
        Some("applied")
    );

    let requests = of_kind(&spans, kind::CLIENT);
    for (attempt, (_, sent_span_id)) in attempts.iter().zip(&sent) {
        let request = requests
            .iter()
            .find(|request| request.parent_span_id == attempt.span_id)
            .expect("each attempt made a request");
        assert_eq!(
            &request.span_id, sent_span_id,
            "the traceparent sent is the request's own span"
        );
        assert_eq!(
            request.name,
            "POST /public/v1/accounts/buyers/{id}/synchronize"
        );
        assert_eq!(
            request.attribute(semconv::HTTP_REQUEST_METHOD),
            Some("POST")
        );
        assert_eq!(
            request.attribute(semconv::SERVER_ADDRESS),
            Some("127.0.0.1")
        );
        assert!(
            request
                .attribute(semconv::URL_FULL)
                .unwrap()
                .ends_with(&path),
            "{request:?}"
        );
    }
    let statuses: Vec<Option<&str>> = attempts
        .iter()
        .map(|attempt| {
            requests
                .iter()
                .find(|request| request.parent_span_id == attempt.span_id)
                .and_then(|request| request.attribute(semconv::HTTP_RESPONSE_STATUS_CODE))
        })
        .collect();
    assert_eq!(statuses, vec![Some("503"), Some("200")]);

    let audit = audit_trace_ids(&env, event_id).await;
    assert!(!audit.is_empty());
    for trace_id in audit {
        assert_eq!(
            trace_id.as_deref(),
            Some(PRODUCER_TRACE_ID),
            "every audit row names the trace"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn delivery_without_traceparent_starts_a_trace() {
    let collector = Collector::start().await;
    let telemetry = std::sync::Arc::new(install_telemetry(Some(&collector.url)));
    let env = TestEnv::start().await;
    let buyer = active_buyer(&env);

    let event = envelope("Buyer", Some(&buyer), "updated", None);
    let event_id = id_of(&event);
    publish_traced(&env, &event, None).await;
    env.wait_until_settled(1).await;

    let calls = env.calls(synchronize_path(&buyer));
    assert_eq!(calls.len(), 1);
    let (trace_id, sent_span_id) = traceparent_ids(
        calls[0]
            .header("traceparent")
            .expect("a traceparent header"),
    );
    assert_ne!(trace_id, PRODUCER_TRACE_ID);

    let spans = spans_of_trace(&telemetry, &collector, &trace_id, |spans| {
        of_kind(spans, kind::CONSUMER).len() == 1 && of_kind(spans, kind::CLIENT).len() == 1
    })
    .await;
    let delivery = &of_kind(&spans, kind::CONSUMER)[0];
    assert_eq!(
        delivery.parent_span_id, "",
        "the delivery is the root of a new trace"
    );
    assert_eq!(of_kind(&spans, kind::CLIENT)[0].span_id, sent_span_id);

    for audit_trace_id in audit_trace_ids(&env, event_id).await {
        assert_eq!(audit_trace_id.as_deref(), Some(trace_id.as_str()));
    }
    env.finish().await;
}

#[tokio::test]
async fn coalesced_synchronization_links_the_other_delivery() {
    let collector = Collector::start().await;
    let telemetry = std::sync::Arc::new(install_telemetry(Some(&collector.url)));
    let env = TestEnv::start_with(|setup| {
        setup.config.dispatch.coalesce_window = Duration::from_secs(2);
    })
    .await;
    let buyer = active_buyer(&env);
    let older_traceparent = "00-11111111111111111111111111111111-1111111111111111-01";
    let newer_traceparent = "00-22222222222222222222222222222222-2222222222222222-01";

    let older = envelope("Buyer", Some(&buyer), "updated", None);
    let newer = envelope("Buyer", Some(&buyer), "synchronizeRequested", None);
    publish_traced(&env, &older, Some(older_traceparent)).await;
    publish_traced(&env, &newer, Some(newer_traceparent)).await;
    env.wait_until_settled(2).await;
    assert_eq!(
        env.calls(synchronize_path(&buyer)).len(),
        1,
        "one call serves both events"
    );

    let newer_trace = "22222222222222222222222222222222";
    let older_trace = "11111111111111111111111111111111";
    let spans = spans_of_trace(&telemetry, &collector, newer_trace, |spans| {
        of_kind(spans, kind::CONSUMER).len() == 1 && attempts_of(spans).len() == 1
    })
    .await;
    let older_deliveries = spans_of_trace(&telemetry, &collector, older_trace, |spans| {
        of_kind(spans, kind::CONSUMER).len() == 1
    })
    .await;
    let older_delivery = &older_deliveries[0];
    let newer_delivery = &of_kind(&spans, kind::CONSUMER)[0];
    let attempt = &attempts_of(&spans)[0];

    assert_eq!(
        attempt.parent_span_id, newer_delivery.span_id,
        "the newest event's delivery is the parent"
    );
    assert_eq!(
        attempt.attribute("event.id"),
        Some(id_of(&newer).to_string().as_str())
    );
    assert_eq!(attempt.links.len(), 1, "{attempt:?}");
    let link = &attempt.links[0];
    assert_eq!(link.trace_id, older_delivery.trace_id);
    assert_eq!(link.span_id, older_delivery.span_id);
    assert_eq!(
        link.attributes.get("event.id").map(String::as_str),
        Some(id_of(&older).to_string().as_str())
    );
    env.finish().await;
}

/// Finds the value of the sample line `name{labels} value` whose labels contain
/// `label`.
fn sample_value(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .find(|line| line[name.len()..].starts_with(['{', ' ']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn health_endpoints_respond_while_running() {
    let _telemetry = install_telemetry(None);
    let env = TestEnv::start_with(|setup| {
        setup.config.telemetry.gauge_interval = Duration::from_millis(200);
    })
    .await;

    let (status, body) = http_get(&env.health_url("/healthz")).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&env.health_url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true);
    assert_eq!(report["consuming"], true);

    let buyers: Vec<String> = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(3)
            .map(|buyer| buyer.id.clone())
            .collect()
    });
    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    env.publish_all(&events).await;
    env.wait_until_settled(3).await;

    let (status, metrics) = http_get(&env.health_url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample_value(
            &metrics,
            "messaging_client_consumed_messages_total",
            "messaging_system=\"rabbitmq\""
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample_value(
            &metrics,
            "erp_sync_deliveries_settled_total",
            "erp_sync_outcome=\"applied\""
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample_value(
            &metrics,
            "http_client_request_duration_seconds_count",
            "url_template=\"/public/v1/accounts/buyers/{id}/synchronize\""
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample_value(&metrics, "erp_sync_broker_consumer_active", ""),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&metrics, "erp_sync_database_reachable", ""),
        Some(1.0)
    );

    // A platform that takes seconds per call does not slow the readiness response.
    let slow_buyer = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .nth(5)
            .map(|buyer| buyer.id.clone())
            .unwrap()
    });
    let slow_path = synchronize_path(&slow_buyer);
    env.simulator
        .control()
        .add_fault(FaultRule::new(
            slow_path.clone(),
            Fault::Delay {
                delay: Duration::from_secs(3),
            },
        ))
        .unwrap();
    env.publish(&envelope("Buyer", Some(&slow_buyer), "updated", None))
        .await;
    wait_until("the slow call is in flight", || {
        let in_flight = env
            .simulator
            .control()
            .find_requests(&RequestFilter::path(slow_path.clone()));
        async move { !in_flight.is_empty() }
    })
    .await;
    let asked = Instant::now();
    let (status, _) = http_get(&env.health_url("/readyz")).await;
    let answered_in = asked.elapsed();
    assert_eq!(status, 200);
    assert!(
        answered_in < Duration::from_secs(1),
        "/readyz took {answered_in:?}"
    );
    env.wait_until_settled(4).await;
    env.finish().await;
}

#[tokio::test]
async fn readiness_fails_without_broker_connection() {
    let _telemetry = install_telemetry(None);
    let mut env = TestEnv::start_with(|setup| setup.start_worker = false).await;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    env.config.amqp.url =
        erp_sync::config::Secret::new(format!("amqp://guest:guest@{}/%2f", proxy.address));
    env.config.amqp.reconnect_min_delay = Duration::from_millis(100);
    env.config.amqp.reconnect_max_delay = Duration::from_millis(500);
    env.start_worker().await;

    let (status, _) = http_get(&env.health_url("/readyz")).await;
    assert_eq!(status, 200);

    proxy.cut();
    let readyz = env.health_url("/readyz");
    wait_until("/readyz reports the lost consumer", || {
        let readyz = readyz.clone();
        async move { http_get(&readyz).await.0 == 503 }
    })
    .await;
    let (_, body) = http_get(&readyz).await;
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["consuming"], false, "{body}");
    assert_eq!(report["ready"], false, "{body}");
    let (_, metrics) = http_get(&env.health_url("/metrics")).await;
    assert_eq!(
        sample_value(&metrics, "erp_sync_broker_consumer_active", ""),
        Some(0.0)
    );

    proxy.restore();
    wait_until("/readyz reports the worker ready again", || {
        let readyz = readyz.clone();
        async move { http_get(&readyz).await.0 == 200 }
    })
    .await;
    let buyer = active_buyer(&env);
    env.publish(&envelope("Buyer", Some(&buyer), "updated", None))
        .await;
    env.wait_until_settled(1).await;
    env.finish().await;
}

/// Names of the metric families a Prometheus text exposition declares.
fn exposed_families(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|declaration| declaration.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Collects every metric name that the dashboard's queries read.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut expressions = Vec::new();
    collect_expressions(dashboard, &mut expressions);
    assert!(!expressions.is_empty(), "the dashboard has queries");
    expressions
        .iter()
        .flat_map(|expression| metric_names_in(expression))
        .collect()
}

/// Extracts the metric names of a PromQL expression: the identifiers with erp-sync's
/// prefixes outside label matchers (`{…}`), label lists (`by (…)`, `without (…)`,
/// `on (…)`, `ignoring (…)`) and quoted strings.
fn metric_names_in(expression: &str) -> Vec<String> {
    const LABEL_LIST_KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const PREFIXES: [&str; 4] = ["erp_sync_", "messaging_", "http_", "db_client_"];

    let characters: Vec<char> = expression.chars().collect();
    let mut names = Vec::new();
    let mut braces = 0;
    let mut parentheses = 0;
    let mut label_list_at: Option<i32> = None;
    let mut last_word = String::new();
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        if character == '"' || character == '\'' {
            index += 1;
            while index < characters.len() && characters[index] != character {
                index += if characters[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
            continue;
        }
        if character.is_ascii_alphabetic() || character == '_' {
            let start = index;
            while index < characters.len()
                && (characters[index].is_ascii_alphanumeric()
                    || matches!(characters[index], '_' | ':'))
            {
                index += 1;
            }
            let word: String = characters[start..index].iter().collect();
            let is_metric = braces == 0
                && label_list_at.is_none()
                && PREFIXES.iter().any(|prefix| word.starts_with(prefix));
            if is_metric {
                names.push(word.clone());
            }
            last_word = word;
            continue;
        }
        match character {
            '{' => braces += 1,
            '}' => braces -= 1,
            '(' => {
                parentheses += 1;
                if LABEL_LIST_KEYWORDS.contains(&last_word.as_str()) {
                    label_list_at = Some(parentheses);
                }
            }
            ')' => {
                if label_list_at == Some(parentheses) {
                    label_list_at = None;
                }
                parentheses -= 1;
            }
            _ => {}
        }
        if !character.is_whitespace() {
            last_word.clear();
        }
        index += 1;
    }
    names
}

fn collect_expressions(value: &Value, expressions: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("expr", Value::String(expression)) => expressions.push(expression.clone()),
                    _ => collect_expressions(value, expressions),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_expressions(item, expressions)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_queries_only_exported_metrics() {
    let _telemetry = install_telemetry(None);
    let env = TestEnv::start_with(|setup| {
        setup.config.telemetry.gauge_interval = Duration::from_millis(200);
    })
    .await;
    let buyers: Vec<String> = env.pick(|data| {
        data.find_buyers(BuyerCase::Active)
            .take(3)
            .map(|buyer| buyer.id.clone())
            .collect()
    });
    let control = env.simulator.control();
    control
        .add_fault(FaultRule::new(synchronize_path(&buyers[0]), Fault::status(503)).times(1))
        .unwrap();
    control
        .add_fault(FaultRule::new(
            synchronize_path(&buyers[1]),
            Fault::status(422),
        ))
        .unwrap();

    let events: Vec<Value> = buyers
        .iter()
        .map(|buyer| envelope("Buyer", Some(buyer), "updated", None))
        .collect();
    env.publish_all(&events).await;
    env.publish_raw(b"not json", "accounts.buyer.updated").await;
    env.wait_until_settled(4).await;

    let url = env.health_url("/metrics");
    wait_until("the gauges report the parked command", || {
        let url = url.clone();
        async move { http_get(&url).await.1.contains("erp_sync_commands_parked{") }
    })
    .await;
    let (_, metrics) = http_get(&url).await;
    let exposed = exposed_families(&metrics);

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("the dashboard exists"))
            .expect("the dashboard is JSON");
    for name in dashboard_metrics(&dashboard) {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|family| exposed.contains(*family))
            })
            .unwrap_or(&name);
        assert!(
            exposed.contains(family),
            "the dashboard queries {name}, which the worker does not export; it exports {exposed:?}"
        );
    }
    env.finish().await;
}
