//! Logging: human-readable lines by default, JSON for log collectors; the level
//! filter comes from `RUST_LOG`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Filter used when `RUST_LOG` is not set: erp-sync at info, its libraries at warn.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,hyper=warn,reqwest=warn";

/// Filter of commands that print their own report, such as the demo, when `RUST_LOG`
/// is not set: only warnings and errors.
pub const QUIET_FILTER: &str = "warn";

/// Installs the global log subscriber with `default_filter` unless `RUST_LOG` is set.
/// Logs go to standard error so that a command's report on standard output stays clean.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let installed = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second initialisation (tests that run several commands) keeps the first.
    drop(installed);
}
