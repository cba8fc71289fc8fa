//! Helpers shared by the simulator tests.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use erp_sync::simulator::{
    self, DEFAULT_TOKEN, RunningSimulator, SimulatorConfig, SimulatorControl,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestSimulator {
    pub simulator: RunningSimulator,
    pub client: reqwest::Client,
}

/// Builds an HTTP client that never uses a proxy, so requests stay on loopback.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("the HTTP client builds")
}

/// Starts a simulator with the default data set on a free port.
pub async fn start() -> TestSimulator {
    start_with(|_| {}).await
}

/// Starts a simulator on a free port after `adjust` changes the default configuration.
pub async fn start_with(adjust: impl FnOnce(&mut SimulatorConfig)) -> TestSimulator {
    let mut config = SimulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..SimulatorConfig::default()
    };
    adjust(&mut config);
    let simulator = simulator::start(config)
        .await
        .expect("the simulator starts");
    TestSimulator {
        simulator,
        client: client(WAIT),
    }
}

impl TestSimulator {
    pub fn control(&self) -> &SimulatorControl {
        self.simulator.control()
    }

    /// Returns the URL of an API path relative to `/public/v1/accounts`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.simulator.api_url())
    }

    /// Builds an authorized request to an API path.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(DEFAULT_TOKEN)
    }

    /// Sends an authorized GET and returns the status and the JSON body (Null if none).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(
            self.request(Method::GET, path)
                .send()
                .await
                .expect("the GET is answered"),
        )
        .await
    }

    /// Sends an authorized POST with an optional JSON body.
    pub async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        json_of(request.send().await.expect("the POST is answered")).await
    }

    /// Sends a request to the control API.
    pub async fn control_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.simulator.base_url());
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        json_of(request.send().await.expect("the control call is answered")).await
    }
}

/// Reads the status and the JSON body of a response; an empty body gives Null.
pub async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("the body is read");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|error| panic!("the body is not JSON ({error}): {bytes:?}"))
    };
    (status, value)
}

/// Waits until `condition` holds, checking every 10 ms, and fails after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
