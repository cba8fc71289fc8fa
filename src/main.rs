//! The `erp-sync` binary: parse the command line, load the configuration, set up
//! telemetry, run the command on a Tokio runtime, flush telemetry, and turn the
//! command's result into an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use erp_sync::cli::{Cli, run_command};
use erp_sync::exit::Exit;
use erp_sync::telemetry::{Telemetry, TelemetrySettings};

/// How long tasks still running after the command returned (a blocking DNS lookup,
/// for one) may take before the process exits without them.
const RUNTIME_SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("erp-sync: {error:#}");
            return Exit::for_error(&error).into();
        }
    };
    let telemetry = match Telemetry::install(TelemetrySettings {
        log: &config.log,
        telemetry: &config.telemetry,
        default_filter: cli.default_log_filter(),
        export: cli.exports_telemetry(),
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("erp-sync: {error:#}");
            return Exit::for_error(&error).into();
        }
    };

    // The worker threads follow TOKIO_WORKER_THREADS when it is set.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("erp-sync: cannot start the Tokio runtime: {error}");
            return Exit::Failure.into();
        }
    };
    let exit = runtime.block_on(async {
        match run_command(cli, config).await {
            Ok(()) => Exit::Success,
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "erp-sync stopped with an error"
                );
                eprintln!("erp-sync: {error:#}");
                Exit::for_error(&error)
            }
        }
    });

    // Neither a task that does not end nor a collector that does not respond may keep
    // the process from exiting, because both steps have a time limit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_LIMIT);
    telemetry.shutdown();
    exit.into()
}
