//! The `erp-sync` binary: parse the command line, load the configuration, set up
//! telemetry, run the command on a Tokio runtime, flush telemetry, and turn the
//! command's result into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    erp_sync::cli::main_with_args(std::env::args_os())
}
