//! A loopback TCP proxy under the test's control: it forwards, stalls silently, drops
//! its connections, or sends new connections to another upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Bytes copied per read.
const BUFFER_BYTES: usize = 64 * 1024;

/// A TCP proxy on 127.0.0.1 with a port of its own.
pub struct TcpProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: AbortHandle,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    /// True while the proxy holds every byte instead of forwarding it.
    stalled: watch::Sender<bool>,
    connections: Mutex<Vec<AbortHandle>>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy listens on loopback");
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            stalled: watch::channel(false).0,
            connections: Mutex::new(Vec::new()),
        });
        let accept_loop = tokio::spawn(accept(listener, shared.clone())).abort_handle();
        TcpProxy {
            address,
            shared,
            accept_loop,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Stops forwarding without closing anything: bytes already read are held, no
    /// further bytes are read, and both peers see a silent network.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards again, including the bytes held during the stall.
    pub fn resume(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Closes every open connection on both sides.
    pub fn drop_connections(&self) {
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Sends new connections to `upstream`; open connections keep their upstream.
    pub fn switch_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.drop_connections();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let upstream = *shared.upstream.lock().unwrap();
        let stalled = shared.stalled.subscribe();
        let connection = tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pump(client_read, server_write, stalled.clone()),
                pump(server_read, client_write, stalled),
            );
        });
        let mut connections = shared.connections.lock().unwrap();
        connections.retain(|handle| !handle.is_finished());
        connections.push(connection.abort_handle());
    }
}

/// Copies one direction until either side closes, waiting before each write while the
/// proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; BUFFER_BYTES];
    loop {
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
