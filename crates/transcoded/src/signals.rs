//! Signals mapped to intent, in one place.
//!
//! First SIGTERM or SIGINT: drain (take no new job; the current encode may finish within
//! `drain-timeout`, after which it is stopped and handed back). Second signal: stop the current encode
//! now. Either way the partial output is deleted and the delivery requeued.

use std::time::Duration;

use rafty_queue::Shutdown;
use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

/// Install the handlers and return the shutdown they drive.
pub fn shutdown_on_signals(drain_timeout: Duration) -> std::io::Result<Shutdown> {
    let shutdown = Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        warn!(
            drain_timeout_secs = drain_timeout.as_secs(),
            "stop requested: finishing the current job (signal again to stop now)"
        );
        s.drain.cancel();
        tokio::select! {
            _ = term.recv() => warn!("second stop request: stopping the current job now"),
            _ = int.recv() => warn!("second stop request: stopping the current job now"),
            _ = tokio::time::sleep(drain_timeout) => warn!("drain timeout reached: stopping the current job"),
        }
        s.abort.cancel();
    });
    Ok(shutdown)
}
