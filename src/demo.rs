//! `erp-sync demo`.

use std::time::Duration;

use crate::config::Config;

pub async fn run_demo(_config: Config, _timeout: Duration) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not ready yet")
}
