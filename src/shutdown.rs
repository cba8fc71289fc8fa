//! The shutdown signal: SIGTERM or SIGINT (Ctrl-C) cancels one token; a second signal
//! exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit code after a second signal (128 + SIGINT, as shells report an interrupt).
const FORCED_EXIT_CODE: i32 = 130;

/// Returns a token cancelled by the first SIGTERM or SIGINT. A second signal ends the
/// process immediately; what was committed stays committed, and commands that were
/// running become due again when their lease ends.
pub fn cancel_on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!(signal = "SIGTERM", "stopping: no new work is taken; in-flight calls may finish. Signal again to exit at once"),
            _ = interrupt.recv() => info!(signal = "SIGINT", "stopping: no new work is taken; in-flight calls may finish. Signal again to exit at once"),
        }
        cancel.cancel();

        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        warn!("second signal: exiting at once");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}
