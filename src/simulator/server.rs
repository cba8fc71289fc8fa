//! Start-up, the accept loop and shutdown.
//!
//! Connections are served with hyper directly rather than `axum::serve`, so a fault
//! can drop one connection without an HTTP response: the request's handler signals its
//! connection task, which drops (or resets) the socket.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::config::SimulatorConfig;
use super::control::{self, SimulatorControl};
use super::pipeline;
use super::routes::{self, API_PREFIX};
use super::state::App;

/// Time that in-flight requests get to finish at shutdown before their connections are
/// dropped. Hanging and stalled requests never finish, so this bounds shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (for example, out of file descriptors) before the next.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Lets a request close the connection it arrived on.
#[derive(Clone)]
pub(crate) struct ConnectionControl {
    close: CancellationToken,
    reset: Arc<AtomicBool>,
}

impl ConnectionControl {
    fn new() -> Self {
        Self {
            close: CancellationToken::new(),
            reset: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Closes the connection at once, with a TCP reset when `reset` is set.
    pub(crate) fn close(&self, reset: bool) {
        self.reset.store(reset, Ordering::SeqCst);
        self.close.cancel();
    }
}

/// A simulator serving in the background of the current tokio runtime. Dropping it
/// stops the simulator too, but without waiting; prefer [`RunningSimulator::shutdown`].
pub struct RunningSimulator {
    addr: SocketAddr,
    control: SimulatorControl,
    accept_task: Option<JoinHandle<()>>,
}

impl RunningSimulator {
    /// Returns the address the simulator listens on, with the real port when port 0
    /// was configured.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the base URL, such as `http://127.0.0.1:8089`. A wildcard listen address
    /// is replaced by the loopback address of the same family.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Returns the base URL of the Accounts API, `<base_url>/public/v1/accounts`.
    pub fn api_url(&self) -> String {
        format!("{}{API_PREFIX}", self.base_url())
    }

    /// Returns the in-process control API.
    pub fn control(&self) -> &SimulatorControl {
        &self.control
    }

    /// Stops accepting connections, gives in-flight requests [`SHUTDOWN_GRACE`] to
    /// finish, then drops every connection and delayed synchronization.
    pub async fn shutdown(mut self) {
        self.control.app().shutdown.cancel();
        if let Some(task) = self.accept_task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "simulator accept loop failed");
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.control.app().shutdown.cancel();
    }
}

/// Starts the simulator on the current tokio runtime and returns once it listens.
pub async fn start(config: SimulatorConfig) -> anyhow::Result<RunningSimulator> {
    let listen = config.listen;
    // Generating or loading the data set takes a noticeable time at large sizes, so it
    // runs on the blocking pool instead of stalling the caller's runtime thread.
    let app = tokio::task::spawn_blocking(move || App::new(config))
        .await
        .context("the simulator's data-set task failed")??;
    let app = Arc::new(app);
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("failed to listen on {listen} (the simulator `listen` setting)")
    })?;
    let addr = listener
        .local_addr()
        .context("failed to read the simulator's listen address")?;

    let router = build_router(Arc::clone(&app));
    let accept_task = tokio::spawn(accept_loop(listener, router, app.shutdown.clone()));
    tracing::debug!(%addr, "simulator started");
    Ok(RunningSimulator {
        addr,
        control: SimulatorControl::new(app),
        accept_task: Some(accept_task),
    })
}

/// Runs the simulator until `shutdown` completes, as `erp-sync simulate` does.
pub async fn serve(
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let simulator = start(config).await?;
    {
        let data = simulator.control().data();
        tracing::info!(
            address = %simulator.addr(),
            buyers = data.buyers().len(),
            sellers = data.sellers().len(),
            erp_links = data.erp_links().len(),
            licensees = data.licensees().len(),
            "simulator listening"
        );
    }
    shutdown.await;
    tracing::info!("simulator stopping");
    simulator.shutdown().await;
    tracing::info!("simulator stopped");
    Ok(())
}

fn build_router(app: Arc<App>) -> Router {
    Router::new()
        .nest(API_PREFIX, routes::api_router())
        .merge(control::router())
        .fallback(routes::unknown_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            pipeline::pipeline,
        ))
        .with_state(app)
}

async fn accept_loop(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "simulator failed to accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);

    // Each connection ends within SHUTDOWN_GRACE; the margin covers scheduling.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "simulator aborted connections that outlived the shutdown grace period"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "simulator could not set TCP_NODELAY");
    }
    let control = ConnectionControl::new();
    let request_control = control.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(request_control.clone());
        router.clone().oneshot(request.map(Body::new))
    });
    let mut connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);

    tokio::select! {
        result = &mut connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "simulator connection ended with an error");
            }
        }
        () = control.close.cancelled() => {
            if control.reset.load(Ordering::SeqCst) {
                let stream = connection.into_parts().io.into_inner();
                if let Err(error) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
                    tracing::debug!(%error, "simulator could not set SO_LINGER for a reset");
                }
            }
            // Dropping the connection closes the socket without a response.
        }
        () = shutdown.cancelled() => {
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            tokio::select! {
                _ = &mut connection => {}
                () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
                () = control.close.cancelled() => {}
            }
        }
    }
}
