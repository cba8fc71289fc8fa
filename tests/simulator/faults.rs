//! Fault rules, the rate limit and latency, from configuration and at run time.

use std::time::{Duration, Instant};

use erp_sync::simulator::model::ErpLinkStatus;
use erp_sync::simulator::{
    BuyerCase, DEFAULT_TOKEN, Fault, FaultRule, LinkCase, PROBLEM_CONTENT_TYPE, RateLimit,
    RequestFilter, RetryAfter, SHUTDOWN_GRACE,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestSimulator, WAIT, client, start, start_with};

const BUYERS: &str = "/public/v1/accounts/buyers";

fn synchronize_path(buyer_id: &str) -> String {
    format!("{BUYERS}/{buyer_id}/synchronize")
}

fn active_buyer(sim: &TestSimulator) -> String {
    sim.control()
        .data()
        .find_buyer(BuyerCase::Active)
        .unwrap()
        .id
        .clone()
}

/// Sends an authorized request with a fresh client, so no pooled connection is reused.
async fn send_fresh(
    sim: &TestSimulator,
    method: Method,
    path: &str,
    timeout: Duration,
) -> reqwest::Result<reqwest::Response> {
    client(timeout)
        .request(method, sim.url(path))
        .bearer_auth(DEFAULT_TOKEN)
        .send()
        .await
}

#[tokio::test]
async fn status_fault_without_retry_after() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    let rule = sim
        .control()
        .add_fault(
            FaultRule::new(synchronize_path(&buyer_id), Fault::status(503))
                .method("POST")
                .times(2),
        )
        .unwrap();

    let first = sim
        .request(Method::POST, &format!("/buyers/{buyer_id}/synchronize"))
        .send()
        .await
        .unwrap();
    let (second, _) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;
    let (third, _) = sim
        .post(&format!("/buyers/{buyer_id}/synchronize"), None)
        .await;

    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(first.headers().get("retry-after").is_none());
    assert_eq!(first.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["title"], "Service Unavailable");
    assert!(problem["traceId"].is_string());
    assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        third,
        StatusCode::OK,
        "the rule is spent after two requests"
    );
    assert!(sim.control().faults().is_empty());

    let logged = sim
        .control()
        .find_requests(&RequestFilter::path(synchronize_path(&buyer_id)));
    assert_eq!(logged.len(), 3);
    assert_eq!(logged[0].status, Some(503));
    assert_eq!(logged[0].fault.as_ref().unwrap().rule, Some(rule));
    assert_eq!(logged[0].fault.as_ref().unwrap().kind, "status");
    assert_eq!(logged[2].fault, None);
}

#[tokio::test]
async fn status_fault_retry_after_seconds() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    sim.control()
        .add_fault(FaultRule::new(
            synchronize_path(&buyer_id),
            Fault::status_retry_after(429, RetryAfter::Seconds(5)),
        ))
        .unwrap();

    let response = sim
        .request(Method::POST, &format!("/buyers/{buyer_id}/synchronize"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "5");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://tools.ietf.org/html/rfc6585#section-4"
    );
}

#[tokio::test]
async fn status_fault_retry_after_http_date() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    sim.control()
        .add_fault(FaultRule::new(
            synchronize_path(&buyer_id),
            Fault::status_retry_after(503, RetryAfter::HttpDate(7)),
        ))
        .unwrap();

    let response = sim
        .request(Method::POST, &format!("/buyers/{buyer_id}/synchronize"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_at =
        httpdate::parse_http_date(response.headers()["retry-after"].to_str().unwrap()).unwrap();
    let date = httpdate::parse_http_date(response.headers()["date"].to_str().unwrap()).unwrap();
    let ahead = retry_at.duration_since(date).unwrap();
    assert!(
        (7..=8).contains(&ahead.as_secs()),
        "Retry-After is {ahead:?} after Date"
    );
}

#[tokio::test]
async fn fault_matches_method_and_glob() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    sim.control()
        .add_fault(
            FaultRule::new("/public/v1/accounts/erp-links/*/block", Fault::status(500))
                .method("post"),
        )
        .unwrap();

    let (get_status, _) = sim.get(&format!("/erp-links/{link_id}")).await;
    let (unblock_status, _) = sim
        .post(&format!("/erp-links/{link_id}/unblock"), None)
        .await;
    let (block_status, _) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(get_status, StatusCode::OK);
    assert_eq!(
        unblock_status,
        StatusCode::BAD_REQUEST,
        "a business answer, not the fault"
    );
    assert_eq!(block_status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        sim.control().data().erp_link(&link_id).unwrap().status,
        ErpLinkStatus::Active
    );
    assert_eq!(sim.control().faults()[0].applied, 1);
}

#[tokio::test]
async fn process_request_applies_action() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let path = format!("/public/v1/accounts/erp-links/{link_id}/block");
    sim.control()
        .add_fault(FaultRule::new(path, Fault::status(504)).process_request())
        .unwrap();

    let (status, _) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;

    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        sim.control().data().erp_link(&link_id).unwrap().status,
        ErpLinkStatus::Blocked
    );
}

#[tokio::test]
async fn delay_fault_answers_late() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    let delay = Duration::from_millis(300);
    sim.control()
        .add_fault(FaultRule::new(
            format!("{BUYERS}/{buyer_id}"),
            Fault::Delay { delay },
        ))
        .unwrap();

    let started = Instant::now();
    let (status, _) = sim.get(&format!("/buyers/{buyer_id}")).await;
    let elapsed = started.elapsed();

    assert_eq!(status, StatusCode::OK);
    assert!(elapsed >= delay, "answered after {elapsed:?}");
    let logged = sim.control().requests();
    assert_eq!(logged[0].fault.as_ref().unwrap().kind, "delay");
    assert_eq!(logged[0].status, Some(200));
}

#[tokio::test]
async fn hang_fault_never_answers() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    sim.control()
        .add_fault(FaultRule::new(synchronize_path(&buyer_id), Fault::Hang).times(1))
        .unwrap();

    let started = Instant::now();
    let result = send_fresh(
        &sim,
        Method::POST,
        &format!("/buyers/{buyer_id}/synchronize"),
        Duration::from_millis(500),
    )
    .await;

    let error = result.expect_err("a hanging request gets no answer");
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let logged = sim
        .control()
        .wait_for_requests(&RequestFilter::default().finished(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(logged[0].status, None);
    assert_eq!(logged[0].fault.as_ref().unwrap().kind, "hang");
    assert_eq!(
        sim.control().stats().routes["POST /public/v1/accounts/buyers/{id}/synchronize"]["none"],
        1
    );
}

#[tokio::test]
async fn stall_body_sends_half_then_stalls() {
    let sim = start().await;
    let buyer_id = active_buyer(&sim);
    sim.control()
        .add_fault(FaultRule::new(
            format!("{BUYERS}/{buyer_id}"),
            Fault::StallBody,
        ))
        .unwrap();

    let mut response = send_fresh(&sim, Method::GET, &format!("/buyers/{buyer_id}"), WAIT)
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let declared = response.content_length().expect("Content-Length is sent");
    let first = response
        .chunk()
        .await
        .unwrap()
        .expect("part of the body arrives");
    assert!(
        (first.len() as u64) < declared,
        "{} of {declared} bytes",
        first.len()
    );
    let rest = tokio::time::timeout(Duration::from_millis(500), response.chunk()).await;
    assert!(rest.is_err(), "the body stalls after the first half");
}

#[tokio::test]
async fn close_connection_sends_no_answer() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let path = format!("/public/v1/accounts/erp-links/{link_id}/block");
    sim.control()
        .add_fault(FaultRule::new(path, Fault::CloseConnection { reset: false }).times(1))
        .unwrap();

    let started = Instant::now();
    let result = send_fresh(
        &sim,
        Method::POST,
        &format!("/erp-links/{link_id}/block"),
        WAIT,
    )
    .await;

    let error = result.expect_err("a closed connection gives no answer");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        sim.control().data().erp_link(&link_id).unwrap().status,
        ErpLinkStatus::Active
    );
    let logged = sim.control().requests();
    assert_eq!(logged[0].fault.as_ref().unwrap().kind, "close_connection");
    assert_eq!(logged[0].status, None);

    let (after, _) = sim.post(&format!("/erp-links/{link_id}/block"), None).await;
    assert_eq!(after, StatusCode::OK, "new connections are served normally");
}

#[tokio::test]
async fn close_connection_reset_after_processing() {
    let sim = start().await;
    let link_id = sim
        .control()
        .data()
        .find_link(LinkCase::Blockable)
        .unwrap()
        .id
        .clone();
    let path = format!("/public/v1/accounts/erp-links/{link_id}/block");
    sim.control()
        .add_fault(FaultRule::new(path, Fault::CloseConnection { reset: true }).process_request())
        .unwrap();

    let result = send_fresh(
        &sim,
        Method::POST,
        &format!("/erp-links/{link_id}/block"),
        WAIT,
    )
    .await;

    let error = result.expect_err("a reset connection gives no answer");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(
        sim.control().data().erp_link(&link_id).unwrap().status,
        ErpLinkStatus::Blocked
    );
}

/// Sends 40 sequential GETs and returns which ones got the injected 503.
async fn fault_pattern(seed: u64) -> Vec<bool> {
    let sim = start_with(|config| {
        config.seed = seed;
        config.buyers = 200;
    })
    .await;
    sim.control()
        .add_fault(FaultRule::new(format!("{BUYERS}/*"), Fault::status(503)).probability(0.5))
        .unwrap();
    let buyer_id = active_buyer(&sim);
    let mut pattern = Vec::new();
    for _ in 0..40 {
        let (status, _) = sim.get(&format!("/buyers/{buyer_id}")).await;
        pattern.push(status == StatusCode::SERVICE_UNAVAILABLE);
    }
    pattern
}

#[tokio::test]
async fn probability_is_deterministic_under_seed() {
    let first = fault_pattern(7).await;
    let second = fault_pattern(7).await;
    let other_seed = fault_pattern(8).await;

    assert_eq!(first, second);
    assert_ne!(first, other_seed);
    let faults = first.iter().filter(|faulted| **faulted).count();
    assert!(
        (8..=32).contains(&faults),
        "{faults} of 40 requests faulted at probability 0.5"
    );
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let sim = start_with(|config| {
        config.rate_limit = Some(RateLimit {
            per_second: 1.0,
            burst: Some(3),
        })
    })
    .await;

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let response = sim
            .request(Method::GET, "/sellers?limit=1")
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = Some(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            assert_eq!(response.headers()["content-type"], PROBLEM_CONTENT_TYPE);
        }
    }

    assert_eq!(&statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(&statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(sim.control().stats().rate_limited, 2);
    assert_eq!(
        sim.control().requests()[4].fault.as_ref().unwrap().kind,
        "rate_limit"
    );
}

#[tokio::test]
async fn rate_limit_changes_at_run_time() {
    let sim = start().await;
    sim.control()
        .update_behaviour(|behaviour| {
            behaviour.rate_limit = Some(RateLimit {
                per_second: 0.5,
                burst: Some(1),
            })
        })
        .unwrap();

    let (first, _) = sim.get("/sellers?limit=1").await;
    let (second, _) = sim.get("/sellers?limit=1").await;
    sim.control()
        .update_behaviour(|behaviour| behaviour.rate_limit = None)
        .unwrap();
    let (third, _) = sim.get("/sellers?limit=1").await;

    assert_eq!(first, StatusCode::OK);
    assert_eq!(second, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third, StatusCode::OK);
}

#[tokio::test]
async fn latency_delays_every_call() {
    let latency = Duration::from_millis(200);
    let sim = start_with(|config| {
        config.latency = Some(erp_sync::simulator::Latency::Fixed { delay: latency })
    })
    .await;

    let started = Instant::now();
    let (status, _) = sim.get("/sellers?limit=1").await;
    let (missing, _) = sim.get("/buyers/BUY-0000-0000").await;
    let elapsed = started.elapsed();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert!(elapsed >= latency * 2, "two calls took {elapsed:?}");
}

#[tokio::test]
async fn uniform_latency_stays_in_range() {
    let sim = start().await;
    let (min, max) = (Duration::from_millis(50), Duration::from_millis(120));
    sim.control()
        .update_behaviour(|behaviour| {
            behaviour.latency = Some(erp_sync::simulator::Latency::Uniform { min, max })
        })
        .unwrap();

    for _ in 0..3 {
        let started = Instant::now();
        sim.get("/sellers?limit=1").await;
        assert!(started.elapsed() >= min, "{:?}", started.elapsed());
    }
}

#[tokio::test]
async fn configured_faults_apply_from_start() {
    let sim = start_with(|config| {
        config.faults = vec![
            FaultRule::new("/public/v1/accounts/sellers", Fault::status(502))
                .method("GET")
                .times(1),
        ];
    })
    .await;

    let (first, _) = sim.get("/sellers").await;
    let (second, _) = sim.get("/sellers").await;

    assert_eq!(first, StatusCode::BAD_GATEWAY);
    assert_eq!(second, StatusCode::OK);
}

#[tokio::test]
async fn faults_over_control_api() {
    let sim = start().await;
    let rule = json!({
        "method": "GET",
        "path": "/public/v1/accounts/sellers",
        "times": 3,
        "fault": {"kind": "status", "status": 503, "retry_after": {"http_date": 7}}
    });

    let (created, active) = sim
        .control_call(Method::POST, "/_sim/faults", Some(rule))
        .await;
    let (_, _) = sim.get("/sellers").await;
    let (_, listed) = sim.control_call(Method::GET, "/_sim/faults", None).await;
    let id = active["id"].as_u64().unwrap();
    let (removed, _) = sim
        .control_call(Method::DELETE, &format!("/_sim/faults/{id}"), None)
        .await;
    let (removed_again, _) = sim
        .control_call(Method::DELETE, &format!("/_sim/faults/{id}"), None)
        .await;
    let (after, _) = sim.get("/sellers").await;

    assert_eq!(created, StatusCode::CREATED);
    assert_eq!(active["rule"]["fault"]["retry_after"]["http_date"], 7);
    assert_eq!(listed[0]["applied"], 1);
    assert_eq!(listed[0]["rule"]["times"], 3);
    assert_eq!(removed, StatusCode::NO_CONTENT);
    assert_eq!(removed_again, StatusCode::NOT_FOUND);
    assert_eq!(after, StatusCode::OK);

    sim.control_call(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path": "*", "fault": {"kind": "hang"}})),
    )
    .await;
    let (cleared, _) = sim.control_call(Method::DELETE, "/_sim/faults", None).await;
    assert_eq!(cleared, StatusCode::NO_CONTENT);
    assert!(sim.control().faults().is_empty());
}

#[tokio::test]
async fn invalid_fault_rules_rejected() {
    let sim = start().await;

    let (probability, problem) = sim
        .control_call(
            Method::POST,
            "/_sim/faults",
            Some(json!({"path": "/x", "probability": 2.0, "fault": {"kind": "hang"}})),
        )
        .await;
    let (unknown_kind, _) = sim
        .control_call(
            Method::POST,
            "/_sim/faults",
            Some(json!({"path": "/x", "fault": {"kind": "explode"}})),
        )
        .await;
    let relative = sim
        .control()
        .add_fault(FaultRule::new("buyers/*", Fault::Hang));

    assert_eq!(probability, StatusCode::BAD_REQUEST);
    assert!(problem["errors"]["probability"][0].is_string(), "{problem}");
    assert_eq!(unknown_kind, StatusCode::BAD_REQUEST);
    assert_eq!(relative.unwrap_err().key, "path");
}

#[tokio::test]
async fn shutdown_ends_hanging_requests() {
    let sim = start().await;
    sim.control()
        .add_fault(FaultRule::new("*", Fault::Hang))
        .unwrap();
    let url = sim.url("/sellers");
    let request = tokio::spawn(async move {
        client(WAIT)
            .get(url)
            .bearer_auth(DEFAULT_TOKEN)
            .send()
            .await
    });
    sim.control()
        .wait_for_requests(&RequestFilter::default().finished(), 1, WAIT)
        .await
        .unwrap();

    let started = Instant::now();
    sim.simulator.shutdown().await;

    assert!(
        started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let outcome = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert!(
        outcome.is_err(),
        "the hanging request ends without an answer"
    );
}
