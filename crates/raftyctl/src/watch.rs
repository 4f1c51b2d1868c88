//! `raftyctl watch`: live progress of every rip and encode in the fleet, from the events on
//! `rafty.transcode` and `rafty.rip` (an exclusive queue of its own, gone when watch exits).
//!
//! On a terminal: one progress bar per active rip or encode (indicatif). Otherwise (a pipe, a log):
//! one plain line per event, so scripts and CI can follow along.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use futures_lite::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{EVENTS_EXCHANGE, RIP_EXCHANGE};
use rafty_core::wire::Event;

use crate::{Failure, close, open};

/// What one event means for the display.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Which activity (a job and title, or a drive on a host).
    pub key: String,
    /// How to name it.
    pub label: String,
    /// Percent done, when known.
    pub percent: Option<f64>,
    /// The rest: rate, ETA, outcome.
    pub detail: String,
    /// Whether the activity ended (done or failed).
    pub finished: bool,
}

fn secs(eta: Option<u64>) -> String {
    eta.map(|s| format!(" ETA {}m{:02}s", s / 60, s % 60))
        .unwrap_or_default()
}

/// Turn an event into a display line; `None` for events that are not about progress.
pub fn describe(event: &Event) -> Option<Line> {
    let host = event.host();
    let drive = |device: &std::path::Path| format!("{host}:{}", device.display());
    let line = match event {
        Event::Started(e) => Line {
            key: format!("{}#{}", e.id, e.title),
            label: format!("{host} {}", e.output.display()),
            percent: Some(0.0),
            detail: "started".into(),
            finished: false,
        },
        Event::Progress(e) => Line {
            key: format!("{}#{}", e.id, e.title),
            label: format!("{host} job {} title {}", short(&e.id.to_string()), e.title),
            percent: Some(e.percent),
            detail: format!(
                "{}{}",
                e.fps.map(|f| format!("{f:.0} fps")).unwrap_or_default(),
                secs(e.eta_secs)
            ),
            finished: false,
        },
        Event::Transfer(e) => Line {
            key: format!("{}@{}:{}", e.id, e.direction.as_str(), e.object),
            label: format!("{host} {} {}", e.direction.as_str(), e.object),
            percent: Some(e.percent),
            detail: format!(
                "{} of {} MB{}{}",
                e.bytes / 1_000_000,
                e.total / 1_000_000,
                e.rate
                    .map(|r| format!(", {:.1} MB/s", r / 1e6))
                    .unwrap_or_default(),
                if e.resumed > 0 {
                    format!(", resumed {}x", e.resumed)
                } else {
                    String::new()
                }
            ),
            finished: e.complete,
        },
        Event::Done(e) => Line {
            key: format!("{}#", e.id),
            label: format!("{host} {}", e.name),
            percent: Some(100.0),
            detail: match (&e.split, e.skipped) {
                (_, true) => "done (already there)".into(),
                (Some(s), false) if s.step != "join" => {
                    format!("{} step of a split title done, {} frames", s.step, s.frames)
                }
                (Some(s), false) => format!(
                    "joined from {} frames: {}/{} checks passed{}",
                    s.frames,
                    s.checks.iter().filter(|c| c.passed).count(),
                    s.checks.len(),
                    s.fallback
                        .as_ref()
                        .map(|why| format!(", encoded whole instead ({why})"))
                        .unwrap_or_default()
                ),
                (None, false) => format!("done, {} output(s)", e.outputs.len()),
            },
            finished: true,
        },
        Event::Failed(e) => Line {
            key: format!("{}#", e.id),
            label: format!("{host} job {}", short(&e.id)),
            percent: None,
            detail: format!("failed ({}): {}", e.next, e.error),
            finished: true,
        },
        Event::RipProgress(e) => Line {
            key: drive(&e.device),
            label: format!("{host} rip {}", e.device.display()),
            percent: Some(e.percent),
            detail: format!(
                "{:.1} MB/s{}{}",
                e.rate / 1e6,
                secs(e.eta_secs),
                if e.unreadable > 0 {
                    format!(", {} sectors unreadable", e.unreadable)
                } else {
                    String::new()
                }
            ),
            finished: false,
        },
        Event::RipDone(e) => Line {
            key: drive(&e.device),
            label: format!("{host} rip {}", e.device.display()),
            percent: Some(100.0),
            detail: format!("done: {}", e.image.display()),
            finished: true,
        },
        Event::RipFailed(e) => Line {
            key: drive(&e.device),
            label: format!("{host} rip {}", e.device.display()),
            percent: None,
            detail: format!("failed: {}", e.error),
            finished: true,
        },
        Event::DiscDone(e) => Line {
            key: format!("{}#", e.disc),
            label: format!("{host} {}", e.name),
            percent: Some(100.0),
            detail: format!("done, {} output(s)", e.outputs.len()),
            finished: true,
        },
        Event::Split(_) | Event::Heartbeat(_) | Event::ReplicaAway(_) | Event::AuditDone(_) => {
            return None;
        }
    };
    Some(line)
}

/// What `watch` (and the dashboard) bind their private queue to: every worker event and every rip
/// event.
pub(crate) const BINDINGS: [(&str, &str); 2] = [
    (EVENTS_EXCHANGE, "rafty.transcode.#"),
    (RIP_EXCHANGE, "rafty.rip.*"),
];

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub(crate) async fn run(loaded: &Loaded) -> Result<(), Failure> {
    let (conn, publisher, url) = open(loaded).await?;
    let ch = publisher.channel();
    let mut events = rafty_queue::control::listen(&ch, &BINDINGS)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    eprintln!("raftyctl: watching rips and encodes on {url} (Ctrl-C to stop)");

    let terminal = std::io::stdout().is_terminal();
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:40!} [{bar:30}] {pos:>3}% {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut active: HashMap<String, ProgressBar> = HashMap::new();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = &mut stop => break,
        };
        let Some(Ok(delivery)) = event else { break };
        let event = match Event::decode(delivery.routing_key.as_str(), &delivery.data) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "an event this version cannot read; skipped");
                continue;
            }
        };
        let Some(line) = describe(&event) else {
            continue;
        };
        if !terminal {
            let pct = line
                .percent
                .map(|p| format!(" {p:5.1} %"))
                .unwrap_or_default();
            println!(
                "{} {}{pct} {}",
                time_now(),
                line.label,
                line.detail.trim_end()
            );
            let _ = std::io::stdout().flush();
            continue;
        }
        // A job's done/failed key ends in '#': it closes every bar of that job.
        if line.finished && line.key.ends_with('#') {
            let prefix = line.key.clone();
            let keys: Vec<String> = active
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in keys {
                if let Some(bar) = active.remove(&k) {
                    if let Some(p) = line.percent {
                        bar.set_position(p as u64);
                    }
                    bar.finish_with_message(line.detail.clone());
                }
            }
            let _ = bars.println(format!("{} {}", line.label, line.detail));
            continue;
        }
        let bar = active.entry(line.key.clone()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar
        });
        bar.set_prefix(line.label.clone());
        if let Some(p) = line.percent {
            bar.set_position(p as u64);
        }
        bar.set_message(line.detail.clone());
        if line.finished {
            bar.finish();
            active.remove(&line.key);
        }
    }
    close(&conn).await;
    Ok(())
}

fn time_now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rafty_core::wire::{Done, Progress, RipProgress, WorkerState, WorkerStatus};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn events_become_lines() {
        let id = Uuid::parse_str("01234567-89ab-4def-8123-456789abcdef").unwrap();
        let p = describe(&Event::Progress(Progress {
            id,
            host: "a".into(),
            title: 2,
            percent: 42.5,
            fps: Some(210.4),
            eta_secs: Some(75),
        }))
        .unwrap();
        assert_eq!(p.key, format!("{id}#2"));
        assert_eq!(p.label, "a job 01234567 title 2");
        assert_eq!(p.percent, Some(42.5));
        assert_eq!(p.detail, "210 fps ETA 1m15s");
        let d = describe(&Event::Done(Done {
            id,
            host: "a".into(),
            name: "X".into(),
            disc: None,
            outputs: Vec::new(),
            skipped: false,
            attempt: 0,
            preset: "P".into(),
            handbrake: "H".into(),
            elapsed_secs: 1.0,
            finished_at: "2026-12-02T00:00:00Z".into(),
            split: None,
        }))
        .unwrap();
        assert!(d.finished && d.key == format!("{id}#") && d.percent == Some(100.0));
        let r = describe(&Event::RipProgress(RipProgress {
            device: "/dev/sr0".into(),
            image: "/iso/X.iso.part".into(),
            done: 1,
            total: 10,
            percent: 10.0,
            rate: 2.0e7,
            eta_secs: None,
            unreadable: 0,
            host: "h".into(),
        }))
        .unwrap();
        assert_eq!(r.key, "h:/dev/sr0");
        assert_eq!(r.detail, "20.0 MB/s");
        let bad = describe(&Event::RipProgress(RipProgress {
            device: "/dev/sr0".into(),
            image: "/iso/X.iso.part".into(),
            done: 1,
            total: 10,
            percent: 10.0,
            rate: 2.0e7,
            eta_secs: None,
            unreadable: 3,
            host: "h".into(),
        }))
        .unwrap();
        assert_eq!(bad.detail, "20.0 MB/s, 3 sectors unreadable");
        let t = describe(&Event::Transfer(rafty_core::wire::Transfer {
            id,
            host: "laptop".into(),
            direction: rafty_core::wire::Direction::Download,
            object: "/srv/iso/X.iso".into(),
            bytes: 3_000_000,
            total: 6_000_000,
            percent: 50.0,
            rate: Some(4.2e7),
            resumed: 1,
            complete: false,
        }))
        .unwrap();
        assert_eq!(t.label, "laptop download /srv/iso/X.iso");
        assert_eq!(t.percent, Some(50.0));
        assert_eq!(t.detail, "3 of 6 MB, 42.0 MB/s, resumed 1x");
        assert!(!t.finished);
        let beat = Event::Heartbeat(WorkerStatus {
            host: "h".into(),
            app: "transcoded".into(),
            version: "0".into(),
            handbrake: "H".into(),
            pid: 1,
            uptime_secs: 0,
            state: WorkerState::Idle,
            job: None,
        });
        assert!(describe(&beat).is_none());
    }
}
