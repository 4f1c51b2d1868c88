//! Keeping a desktop awake while it encodes: a systemd-logind "sleep" inhibitor, held for the length of
//! a job. logind hands out a file descriptor; the lock lasts as long as it is open, so it is released
//! when the job ends (the descriptor is dropped) or when the process dies (the kernel closes it).
//! Without logind (servers, containers, no system bus) this is a debug line, not an error.

use zbus::OwnedFd;

/// A held inhibitor; released when dropped.
pub struct SleepInhibitor {
    _fd: OwnedFd,
}

/// Ask logind not to suspend while `why` is going on. `None` when logind is not there.
pub async fn inhibit_sleep(why: &str) -> Option<SleepInhibitor> {
    // A bus without logind can leave a call waiting for service activation; a job does not wait for it.
    let taken = tokio::time::timeout(std::time::Duration::from_secs(2), take(why))
        .await
        .unwrap_or_else(|_| {
            Err(zbus::Error::Failure(
                "logind did not answer within 2 s".into(),
            ))
        });
    match taken {
        Ok(fd) => {
            tracing::debug!(why, "sleep inhibitor taken");
            Some(SleepInhibitor { _fd: fd })
        }
        Err(e) => {
            tracing::debug!(error = %e, "no sleep inhibitor (logind unavailable)");
            None
        }
    }
}

async fn take(why: &str) -> zbus::Result<OwnedFd> {
    let conn = zbus::Connection::system().await?;
    let manager = zbus::Proxy::new(
        &conn,
        "org.freedesktop.login1",
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
    )
    .await?;
    manager
        .call("Inhibit", &("sleep", "Rafty transcoded", why, "block"))
        .await
}
