//! A TCP proxy on loopback that a test can cut and restore, so a worker loses its
//! broker connection while the shared broker and every other client stay untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection to `target` until cut.
pub struct TcpProxy {
    pub address: SocketAddr,
    refusing: Arc<AtomicBool>,
    /// Bumped by [`TcpProxy::cut`]; every forwarded connection ends when it changes.
    generation: watch::Sender<u64>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds a loopback port");
        let address = listener.local_addr().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);

        let acceptor = tokio::spawn({
            let refusing = refusing.clone();
            let generation = generation.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(forward(client, target, generation.subscribe()));
                }
            }
        });
        TcpProxy {
            address,
            refusing,
            generation,
            acceptor,
        }
    }

    /// Closes every forwarded connection and refuses new ones until restored.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.generation.send_modify(|generation| *generation += 1);
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}
