//! A simulator of the Marketplace Platform's Accounts API.

use std::net::SocketAddr;

/// Settings of the simulator (placeholder until the simulator lands).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
    pub seed: u64,
    pub buyers: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            listen: "127.0.0.1:8089".parse().unwrap(),
            seed: 42,
            buyers: 10_000,
        }
    }
}

pub async fn serve(
    _config: SimulatorConfig,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not ready yet")
}
