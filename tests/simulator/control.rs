//! The control API under `/_sim/` and its Rust twin, configuration parsing, start-up
//! errors and `serve`.

use std::time::Duration;

use erp_sync::simulator::model::ErpLinkStatus;
use erp_sync::simulator::{
    BuyerCase, DataSet, Fault, FaultRule, Latency, LinkCase, LoggedRequest, RepeatedAction,
    RequestFilter, SimulatorConfig,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{WAIT, client, start, start_with};

#[tokio::test]
async fn request_log_records_details() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let response = sim
        .request(
            Method::POST,
            &format!("/erp-links/{link_id}/block?select=+audit"),
        )
        .header("traceparent", traceparent)
        .header("Idempotency-Key", "cmd-42")
        .json(&json!({"note": "Overdue invoices"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, entries) = sim.control_call(Method::GET, "/_sim/requests", None).await;

    assert_eq!(status, StatusCode::OK);
    let entries: Vec<LoggedRequest> = serde_json::from_value(entries).unwrap();
    assert_eq!(entries.len(), 1, "control calls are not logged");
    let entry = &entries[0];
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.method, "POST");
    assert_eq!(
        entry.path,
        format!("/public/v1/accounts/erp-links/{link_id}/block")
    );
    assert_eq!(entry.query.as_deref(), Some("select=+audit"));
    assert_eq!(entry.header("traceparent"), Some(traceparent));
    assert_eq!(entry.header("idempotency-key"), Some("cmd-42"));
    assert_eq!(
        entry.header("authorization"),
        Some("Bearer idt:TKN-0000-0000:***")
    );
    assert_eq!(entry.body_json(), Some(json!({"note": "Overdue invoices"})));
    assert_eq!(entry.status, Some(200));
    assert_eq!(entry.fault, None);

    let (_, raw) = sim.control_call(Method::GET, "/_sim/requests", None).await;
    let at = raw[0]["at"].as_str().unwrap();
    assert_eq!(
        at.len(),
        "2026-12-04T10:15:00.123456Z".len(),
        "microseconds: {at}"
    );
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok());
}

#[tokio::test]
async fn request_log_filters() {
    let sim = start().await;
    let buyer_id = sim
        .control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .id
        .clone();
    sim.get(&format!("/buyers/{buyer_id}")).await;
    sim.post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;
    sim.get("/buyers/BUY-0000-0000").await;
    sim.get("/sellers").await;

    let (_, by_glob) = sim
        .control_call(
            Method::GET,
            "/_sim/requests?path=/public/v1/accounts/buyers/*",
            None,
        )
        .await;
    let (_, by_method) = sim
        .control_call(Method::GET, "/_sim/requests?method=post", None)
        .await;
    let (_, since) = sim
        .control_call(Method::GET, "/_sim/requests?since=2", None)
        .await;
    let (_, by_status) = sim
        .control_call(Method::GET, "/_sim/requests?status=404", None)
        .await;
    let (_, limited) = sim
        .control_call(Method::GET, "/_sim/requests?limit=1", None)
        .await;
    let (bad_filter, _) = sim
        .control_call(Method::GET, "/_sim/requests?colour=red", None)
        .await;

    let seqs = |value: &Value| -> Vec<u64> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&by_glob), [1, 2, 3]);
    assert_eq!(seqs(&by_method), [2]);
    assert_eq!(seqs(&since), [3, 4]);
    assert_eq!(seqs(&by_status), [3]);
    assert_eq!(seqs(&limited), [1]);
    assert_eq!(bad_filter, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn clearing_log_keeps_sequence() {
    let sim = start().await;
    sim.get("/sellers").await;
    sim.get("/sellers").await;

    let (cleared, _) = sim
        .control_call(Method::DELETE, "/_sim/requests", None)
        .await;
    sim.get("/sellers").await;

    assert_eq!(cleared, StatusCode::NO_CONTENT);
    let entries = sim.control().requests();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].seq, 3);
}

#[tokio::test]
async fn request_log_capacity_bounds_memory() {
    let sim = start_with(|config| config.request_log_capacity = 3).await;
    for _ in 0..5 {
        sim.get("/sellers?limit=1").await;
    }

    let entries = sim.control().requests();
    let stats = sim.control().stats();

    assert_eq!(
        entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(stats.log_dropped, 2);
    assert_eq!(stats.log_capacity, 3);
    assert_eq!(stats.requests, 5);
}

#[tokio::test]
async fn stats_count_routes_and_statuses() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    sim.post(&format!("/erp-links/{link_id}/block"), None).await;
    sim.post(&format!("/erp-links/{link_id}/block"), None).await;
    sim.client.get(sim.url("/sellers")).send().await.unwrap();
    sim.control()
        .add_fault(FaultRule::new("/public/v1/accounts/sellers", Fault::status(503)).times(1))
        .unwrap();
    sim.get("/sellers").await;

    let (status, stats) = sim.control_call(Method::GET, "/_sim/stats", None).await;

    assert_eq!(status, StatusCode::OK);
    let block = &stats["routes"]["POST /public/v1/accounts/erp-links/{id}/block"];
    assert_eq!(block["200"], 1);
    assert_eq!(block["400"], 1);
    assert_eq!(stats["routes"]["GET /public/v1/accounts/sellers"]["401"], 1);
    assert_eq!(stats["routes"]["GET /public/v1/accounts/sellers"]["503"], 1);
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["faults"], 1);

    let (reset, _) = sim.control_call(Method::DELETE, "/_sim/stats", None).await;
    assert_eq!(reset, StatusCode::NO_CONTENT);
    assert_eq!(sim.control().stats().requests, 0);
}

#[tokio::test]
async fn config_changes_at_run_time() {
    let sim = start().await;
    let blocked = sim
        .control()
        .data()
        .find_link(LinkCase::Unblockable)
        .unwrap()
        .id
        .clone();

    let (status, settings) = sim
        .control_call(
            Method::PUT,
            "/_sim/config",
            Some(json!({
                "repeated_action": "noop",
                "illegal_transition_status": 409,
                "latency": {"distribution": "fixed", "delay": "5ms"}
            })),
        )
        .await;
    let (repeated, _) = sim.post(&format!("/erp-links/{blocked}/block"), None).await;
    let (_, current) = sim.control_call(Method::GET, "/_sim/config", None).await;
    let (_, reset) = sim
        .control_call(Method::PUT, "/_sim/config", Some(json!({"latency": null})))
        .await;
    let (invalid, problem) = sim
        .control_call(
            Method::PUT,
            "/_sim/config",
            Some(json!({"illegal_transition_status": 418})),
        )
        .await;
    let (unknown, _) = sim
        .control_call(Method::PUT, "/_sim/config", Some(json!({"colour": "red"})))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(settings["repeated_action"], "noop");
    assert_eq!(repeated, StatusCode::OK);
    assert_eq!(current["illegal_transition_status"], 409);
    assert_eq!(current["latency"]["delay"], "5ms");
    assert!(reset.get("latency").is_none());
    assert_eq!(invalid, StatusCode::BAD_REQUEST);
    assert!(
        problem["errors"]["illegal_transition_status"][0]
            .as_str()
            .unwrap()
            .contains("418")
    );
    assert_eq!(unknown, StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.control().behaviour().repeated_action,
        RepeatedAction::Noop
    );
}

#[tokio::test]
async fn objects_read_and_patch() {
    let sim = start().await;
    let (link_id, buyer_id) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::Blockable).unwrap();
        (link.id.clone(), link.buyer.id.clone())
    };

    let (read, stored) = sim
        .control_call(Method::GET, &format!("/_sim/objects/{link_id}"), None)
        .await;
    let (patched, updated) = sim
        .control_call(
            Method::PUT,
            &format!("/_sim/objects/{link_id}"),
            Some(json!({"status": "Blocked", "note": "Set by a test"})),
        )
        .await;
    let (_, api_view) = sim.get(&format!("/erp-links/{link_id}")).await;
    sim.control_call(
        Method::PATCH,
        &format!("/_sim/objects/{buyer_id}"),
        Some(json!({"externalIds": null})),
    )
    .await;
    let (synchronize, _) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    assert_eq!(read, StatusCode::OK);
    assert_eq!(
        stored["audit"]["created"]["at"].as_str().map(str::len),
        Some(24),
        "the stored form keeps the audit"
    );
    assert_eq!(patched, StatusCode::OK);
    assert_eq!(updated["status"], "Blocked");
    assert_eq!(api_view["status"], "Blocked");
    assert_eq!(api_view["note"], "Set by a test");
    assert_eq!(
        synchronize,
        StatusCode::BAD_REQUEST,
        "the buyer lost its ERP ids"
    );
}

#[tokio::test]
async fn object_patch_errors() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let (missing_status, _) = sim
        .control_call(Method::GET, "/_sim/objects/BUY-0000-0000", None)
        .await;
    let (bad_status, bad) = sim
        .control_call(
            Method::PUT,
            &format!("/_sim/objects/{link_id}"),
            Some(json!({"status": "Frozen"})),
        )
        .await;
    let (id_status, _) = sim
        .control_call(
            Method::PUT,
            &format!("/_sim/objects/{link_id}"),
            Some(json!({"id": "ERP-0000-0000-0001"})),
        )
        .await;
    let (dangling_status, _) = sim
        .control_call(
            Method::PUT,
            &format!("/_sim/objects/{link_id}"),
            Some(json!({"buyer": {"id": "BUY-0000-0000"}})),
        )
        .await;

    assert_eq!(missing_status, StatusCode::NOT_FOUND);
    assert_eq!(bad_status, StatusCode::BAD_REQUEST);
    assert!(
        bad["errors"]["body"][0]
            .as_str()
            .unwrap()
            .contains("Frozen")
    );
    assert_eq!(id_status, StatusCode::BAD_REQUEST);
    assert_eq!(dangling_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.control().data().erp_link(&link_id).unwrap().status,
        ErpLinkStatus::Active
    );
}

#[tokio::test]
async fn moving_a_link_updates_indexes() {
    let sim = start().await;
    let (link_id, old_buyer, new_buyer) = {
        let data = sim.control().data();
        let link = data.find_link(LinkCase::Blockable).unwrap();
        let other = data
            .buyers()
            .iter()
            .find(|buyer| {
                buyer.id != link.buyer.id && data.link_of_pair(&buyer.id, &link.seller.id).is_none()
            })
            .unwrap();
        (link.id.clone(), link.buyer.id.clone(), other.id.clone())
    };

    sim.control()
        .patch_object(&link_id, &json!({"buyer": {"id": new_buyer}}))
        .unwrap();

    let data = sim.control().data();
    assert!(
        data.links_of_buyer(&new_buyer)
            .any(|link| link.id == link_id)
    );
    assert!(
        !data
            .links_of_buyer(&old_buyer)
            .any(|link| link.id == link_id)
    );
}

#[tokio::test]
async fn reset_regenerates_data() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    let (status, summary) = sim.control_call(Method::POST, "/_sim/reset", None).await;
    let restored = sim.control().data().erp_link(&link_id).unwrap().status;
    let (_, smaller) = sim
        .control_call(
            Method::POST,
            "/_sim/reset",
            Some(json!({"buyers": 50, "sellers": 5})),
        )
        .await;
    let (bad, _) = sim
        .control_call(
            Method::POST,
            "/_sim/reset",
            Some(json!({"buyers": 5_000_000})),
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["buyers"], 10_000);
    assert_eq!(restored, ErpLinkStatus::Active);
    assert_eq!(smaller["buyers"], 50);
    assert_eq!(smaller["sellers"], 5);
    assert_eq!(bad, StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.control().requests().len(),
        1,
        "reset keeps the request log"
    );
}

#[tokio::test]
async fn export_loads_as_fixture() {
    let sim = start_with(|config| config.buyers = 100).await;

    let response = sim
        .client
        .get(format!("{}/_sim/export", sim.simulator.base_url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let data = DataSet::from_json(&response.text().await.unwrap()).unwrap();
    assert_eq!(data.buyers().len(), 100);
    assert_eq!(data.to_json(), sim.control().export_json());
}

#[tokio::test]
async fn wait_for_requests_times_out() {
    let sim = start().await;
    sim.get("/sellers").await;

    let error = sim
        .control()
        .wait_for_requests(
            &RequestFilter::path("/public/v1/accounts/sellers"),
            2,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();

    assert_eq!(error.found, 1);
    assert_eq!(error.wanted, 2);
}

#[tokio::test]
async fn wait_for_requests_wakes_on_arrival() {
    let sim = start().await;
    let url = sim.url("/sellers");
    let sender = tokio::spawn(async move {
        client(WAIT)
            .get(url)
            .bearer_auth(erp_sync::simulator::DEFAULT_TOKEN)
            .send()
            .await
            .map(|r| r.status())
    });

    let entries = sim
        .control()
        .wait_for_requests(
            &RequestFilter::path("/public/v1/accounts/sellers").finished(),
            1,
            WAIT,
        )
        .await
        .unwrap();

    assert_eq!(entries[0].status, Some(200));
    assert_eq!(sender.await.unwrap().unwrap(), StatusCode::OK);
}

#[test]
fn config_parses_from_toml() {
    let text = r#"
        listen = "127.0.0.1:0"
        tokens = ["idt:TKN-1234-5678:secret"]
        seed = 9
        buyers = 200
        sellers = 6
        default_page_limit = 50
        max_page_limit = 500
        illegal_transition_status = 409
        repeated_action = "noop"
        synchronize_response = "accepted"
        synchronize_delay = "250ms"
        auto_sync = "2s"
        unauthorized_body = "empty"
        seller_currencies = "single"
        request_log_capacity = 1000
        latency = { distribution = "log_normal", mean = "20ms", std_dev = "10ms" }
        rate_limit = { per_second = 200.0, burst = 50 }

        [[faults]]
        method = "POST"
        path = "/public/v1/accounts/erp-links/*/block"
        probability = 0.1
        fault = { kind = "status", status = 503, retry_after = { seconds = 5 } }

        [[faults]]
        path = "/public/v1/accounts/buyers/*/synchronize"
        times = 1
        process_request = true
        fault = { kind = "close_connection", reset = true }
    "#;

    let config: SimulatorConfig = toml::from_str(text).unwrap();

    config.validate().unwrap();
    assert_eq!(config.synchronize_delay, Duration::from_millis(250));
    assert_eq!(config.auto_sync, Some(Duration::from_secs(2)));
    assert_eq!(
        config.latency,
        Some(Latency::LogNormal {
            mean: Duration::from_millis(20),
            std_dev: Duration::from_millis(10)
        })
    );
    assert_eq!(config.faults.len(), 2);
    assert_eq!(
        config.faults[1].fault,
        Fault::CloseConnection { reset: true }
    );
    assert!(config.faults[1].process_request);
    let round_trip: SimulatorConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(round_trip, config);
}

#[test]
fn config_defaults_and_errors() {
    let empty: SimulatorConfig = toml::from_str("").unwrap();
    let unknown = toml::from_str::<SimulatorConfig>("colour = \"red\"").unwrap_err();
    let page_limits = SimulatorConfig {
        default_page_limit: 2000,
        ..SimulatorConfig::default()
    };
    let status = SimulatorConfig {
        illegal_transition_status: 418,
        ..SimulatorConfig::default()
    };
    let no_tokens = SimulatorConfig {
        tokens: Vec::new(),
        ..SimulatorConfig::default()
    };
    let bad_rule = SimulatorConfig {
        faults: vec![FaultRule::new("/x", Fault::Hang).probability(1.5)],
        ..SimulatorConfig::default()
    };

    assert_eq!(empty, SimulatorConfig::default());
    assert_eq!(empty.listen.to_string(), "127.0.0.1:8089");
    assert_eq!(empty.seed, 42);
    assert_eq!(empty.buyers, 10_000);
    assert!(unknown.to_string().contains("colour"), "{unknown}");
    assert_eq!(
        page_limits.validate().unwrap_err().key,
        "default_page_limit"
    );
    assert_eq!(
        status.validate().unwrap_err().key,
        "illegal_transition_status"
    );
    assert_eq!(no_tokens.validate().unwrap_err().key, "tokens");
    assert_eq!(
        bad_rule.validate().unwrap_err().key,
        "faults[0].probability"
    );
}

#[test]
fn config_debug_hides_tokens() {
    let config = SimulatorConfig {
        tokens: vec!["idt:TKN-1234-5678:very-secret".into()],
        ..SimulatorConfig::default()
    };

    let printed = format!("{config:?}");

    assert!(!printed.contains("very-secret"), "{printed}");
    assert!(printed.contains("[1 redacted]"), "{printed}");
}

#[tokio::test]
async fn start_fails_on_busy_port() {
    let first = start().await;
    let config = SimulatorConfig {
        listen: first.simulator.addr(),
        buyers: 10,
        ..SimulatorConfig::default()
    };

    let error = erp_sync::simulator::start(config)
        .await
        .err()
        .expect("the port is taken");

    assert!(
        format!("{error:#}").contains("failed to listen on"),
        "{error:#}"
    );
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    // Reserve a free port, release it, and let `serve` bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = SimulatorConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        buyers: 100,
        ..SimulatorConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(erp_sync::simulator::serve(config, async move {
        let _ = stopped.await;
    }));

    let health = format!("http://127.0.0.1:{port}/_sim/health");
    let http = client(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    let body: Value = loop {
        if let Ok(response) = http.get(&health).send().await {
            break response.json().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the simulator never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.send(()).unwrap();
    let result = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();

    assert_eq!(body["status"], "ok");
    assert_eq!(body["data"]["buyers"], 100);
    result.unwrap();
}
