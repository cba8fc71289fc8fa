//! The worker's readiness flags, shared by its tasks, and the HTTP endpoints that
//! report them to probes and to Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness of the worker's parts. The worker is ready when it has a consumer on the
/// work queue, the database answers, and dispatch is not paused by a refused token.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
    database_reachable: AtomicBool,
    dispatch_paused: AtomicBool,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            database_reachable: AtomicBool::new(true),
            ..Readiness::default()
        }
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    pub fn set_database_reachable(&self, reachable: bool) {
        self.database_reachable.store(reachable, Ordering::Relaxed);
    }

    pub fn set_dispatch_paused(&self, paused: bool) {
        self.dispatch_paused.store(paused, Ordering::Relaxed);
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn is_database_reachable(&self) -> bool {
        self.database_reachable.load(Ordering::Relaxed)
    }

    pub fn is_dispatch_paused(&self) -> bool {
        self.dispatch_paused.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.is_consuming() && self.is_database_reachable() && !self.is_dispatch_paused()
    }
}

/// The readiness report of `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct ReadinessReport {
    ready: bool,
    consuming: bool,
    database_reachable: bool,
    dispatch_paused: bool,
}

impl ReadinessReport {
    fn of(readiness: &Readiness) -> ReadinessReport {
        ReadinessReport {
            ready: readiness.is_ready(),
            consuming: readiness.is_consuming(),
            database_reachable: readiness.is_database_reachable(),
            dispatch_paused: readiness.is_dispatch_paused(),
        }
    }
}

/// Opens the listener of the health and metrics endpoints.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!(
            "cannot listen on {address} (telemetry.listen) for the health and metrics endpoints; \
             choose a free address with ERP_SYNC_TELEMETRY_LISTEN, or \"\" to turn the listener off"
        )
    })
}

/// Serves the endpoints for probes and scraping until `shutdown`:
///
/// - `GET /healthz`: 200 while the process runs;
/// - `GET /readyz`: 200 when the worker consumes, the database is reachable and
///   dispatch is not paused, 503 otherwise, with the three checks as JSON. It reads
///   flags the worker keeps, so it responds at once however slow the platform is;
/// - `GET /metrics`: every metric in the Prometheus text format.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(readiness);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn alive() -> &'static str {
    "ok\n"
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, Json<ReadinessReport>) {
    let report = ReadinessReport::of(&readiness);
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics_text() -> Response {
    match crate::telemetry::render_metrics() {
        Some(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no telemetry is installed in this process\n",
        )
            .into_response(),
    }
}
