//! OTLP/HTTP collectors on loopback for tests: one that decodes and keeps what the
//! worker exports, one that accepts connections and never responds, and an address
//! where nothing listens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// OTLP span kinds, as the protocol numbers them.
pub mod kind {
    pub const INTERNAL: i32 = 1;
    pub const CLIENT: i32 = 3;
    pub const CONSUMER: i32 = 5;
}

/// OTLP status code of a failed span.
pub const STATUS_ERROR: i32 = 2;

/// A span as the collector received it, with ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    pub service_name: Option<String>,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub status_code: i32,
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<CollectedLink>,
}

impl CollectedSpan {
    /// Returns the value of an attribute, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A link of a collected span.
#[derive(Debug, Clone)]
pub struct CollectedLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<CollectedSpan>,
    metric_names: BTreeSet<String>,
}

/// A collector that accepts every export and keeps it.
pub struct Collector {
    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub url: String,
    received: Arc<Mutex<Received>>,
    server: JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the collector binds a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .route("/v1/metrics", post(receive_metrics))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            url,
            received,
            server,
        }
    }

    /// Returns every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Returns the names of every metric received so far.
    pub fn metric_names(&self) -> BTreeSet<String> {
        self.received.lock().unwrap().metric_names.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Builds the response to a successful export: an empty protobuf message.
fn accepted() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
}

async fn receive_traces(
    State(received): State<Arc<Mutex<Received>>>,
    body: Bytes,
) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut received = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|resource| attributes(&resource.attributes).remove("service.name"));
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.spans.push(CollectedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    status_code: span.status.map(|status| status.code).unwrap_or_default(),
                    attributes: attributes(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|link| CollectedLink {
                            trace_id: hex::encode(&link.trace_id),
                            span_id: hex::encode(&link.span_id),
                            attributes: attributes(&link.attributes),
                        })
                        .collect(),
                });
            }
        }
    }
    accepted().into_response()
}

async fn receive_metrics(
    State(received): State<Arc<Mutex<Received>>>,
    body: Bytes,
) -> impl IntoResponse {
    let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut received = received.lock().unwrap();
    for resource_metrics in request.resource_metrics {
        for scope_metrics in resource_metrics.scope_metrics {
            for metric in scope_metrics.metrics {
                received.metric_names.insert(metric.name);
            }
        }
    }
    accepted().into_response()
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text_of(pair.value.as_ref())))
        .collect()
}

fn text_of(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A collector that accepts connections, reads nothing and never responds.
pub struct SilentCollector {
    pub url: String,
    server: JoinHandle<()>,
}

impl SilentCollector {
    pub async fn start() -> SilentCollector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the silent collector binds a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut open_connections = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                open_connections.push(connection);
            }
        });
        SilentCollector { url, server }
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Returns a loopback URL where nothing listens, on a port that was free a moment ago.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}
