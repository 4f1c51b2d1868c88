//! Signals mapped to intent.
//!
//! First SIGTERM or SIGINT: take no more events and finish the one in hand (the attempts under way,
//! each bounded by `[notify] timeout`), then exit 0; an event not yet delivered to every target stays in
//! the queue. A second signal stops at once, in the middle of a request if need be.

use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

use crate::Shutdown;

/// Install the handlers and return the shutdown they drive. Must be called inside the runtime.
pub fn shutdown_on_signals() -> std::io::Result<Shutdown> {
    let shutdown = Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        warn!("stop requested: finishing the notification in hand (signal again to stop now)");
        s.drain.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        warn!("second stop request: stopping now");
        s.abort.cancel();
    });
    Ok(shutdown)
}
