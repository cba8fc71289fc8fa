//! The `erp-sync` binary: parse the command line, load the configuration, set up
//! logging, run the command, and turn its result into an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use erp_sync::cli::{Cli, run_command};
use erp_sync::exit::Exit;
use erp_sync::telemetry::init_logging;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("erp-sync: {error:#}");
            return Exit::for_error(&error).into();
        }
    };
    init_logging(config.log.format, cli.default_log_filter());

    match run_command(cli, config).await {
        Ok(()) => Exit::Success.into(),
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "erp-sync stopped with an error"
            );
            eprintln!("erp-sync: {error:#}");
            Exit::for_error(&error).into()
        }
    }
}
