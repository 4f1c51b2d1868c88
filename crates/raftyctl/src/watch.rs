//! `raftyctl watch`: live progress of every rip and encode in the fleet, from the events on
//! `rafty.transcode` and `rafty.rip` (an exclusive queue of its own, gone when watch exits).
//!
//! On a terminal: one progress bar per active rip or encode (indicatif). Otherwise (a pipe, a log):
//! one plain line per event, so scripts and CI can follow along.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use futures_lite::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rafty_core::config::Loaded;
use rafty_core::names::{EVENTS_EXCHANGE, RIP_EXCHANGE};
use serde_json::Value;

use crate::{EXIT_UNAVAILABLE, Failure, close, open};

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

fn secs(v: &Value) -> String {
    v.as_u64()
        .map(|s| format!(" ETA {}m{:02}s", s / 60, s % 60))
        .unwrap_or_default()
}

/// Turn an event into a display line; `None` for events that are not about progress.
pub fn describe(routing_key: &str, v: &Value) -> Option<Line> {
    let host = v["host"].as_str().unwrap_or("?");
    let job = |v: &Value| {
        format!(
            "{}#{}",
            v["id"].as_str().unwrap_or("?"),
            v["title"].as_u64().unwrap_or(0)
        )
    };
    let drive = |v: &Value| format!("{host}:{}", v["device"].as_str().unwrap_or("?"));
    let kind = routing_key.rsplit('.').next().unwrap_or("");
    let line = match (routing_key.starts_with("rafty.rip."), kind) {
        (false, "started") => Line {
            key: job(v),
            label: format!("{host} {}", v["output"].as_str().unwrap_or("?")),
            percent: Some(0.0),
            detail: "started".into(),
            finished: false,
        },
        (false, "progress") => Line {
            key: job(v),
            label: format!(
                "{host} job {} title {}",
                short(v["id"].as_str()),
                v["title"]
            ),
            percent: v["percent"].as_f64(),
            detail: format!(
                "{}{}",
                v["fps"]
                    .as_f64()
                    .map(|f| format!("{f:.0} fps"))
                    .unwrap_or_default(),
                secs(&v["eta-secs"])
            ),
            finished: false,
        },
        (false, "done") => {
            let outputs = v["outputs"].as_array().map(Vec::len).unwrap_or(0);
            Line {
                key: format!("{}#", v["id"].as_str().unwrap_or("?")),
                label: format!("{host} {}", v["name"].as_str().unwrap_or("?")),
                percent: Some(100.0),
                detail: if v["skipped"] == true {
                    "done (already there)".into()
                } else {
                    format!("done, {outputs} output(s)")
                },
                finished: true,
            }
        }
        (false, "failed") => Line {
            key: format!("{}#", v["id"].as_str().unwrap_or("?")),
            label: format!("{host} job {}", short(v["id"].as_str())),
            percent: None,
            detail: format!(
                "failed ({}): {}",
                v["next"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ),
            finished: true,
        },
        (true, "progress") => Line {
            key: drive(v),
            label: format!("{host} rip {}", v["device"].as_str().unwrap_or("?")),
            percent: v["percent"].as_f64(),
            detail: format!(
                "{:.1} MB/s{}",
                v["rate"].as_f64().unwrap_or(0.0) / 1e6,
                secs(&v["eta-secs"])
            ),
            finished: false,
        },
        (true, "done") => Line {
            key: drive(v),
            label: format!("{host} rip {}", v["device"].as_str().unwrap_or("?")),
            percent: Some(100.0),
            detail: format!("done: {}", v["image"].as_str().unwrap_or("?")),
            finished: true,
        },
        (true, "failed") => Line {
            key: drive(v),
            label: format!("{host} rip {}", v["device"].as_str().unwrap_or("?")),
            percent: None,
            detail: format!("failed: {}", v["error"].as_str().unwrap_or("?")),
            finished: true,
        },
        _ => return None,
    };
    Some(line)
}

fn short(id: Option<&str>) -> &str {
    id.map(|s| &s[..s.len().min(8)]).unwrap_or("?")
}

pub(crate) async fn run(loaded: &Loaded) -> Result<(), Failure> {
    let (conn, publisher, url) = open(loaded).await?;
    let ch = publisher.channel();
    let amqp = |e: lapin::Error| Failure::new(EXIT_UNAVAILABLE, e.to_string());
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    for (exchange, key) in [
        (EVENTS_EXCHANGE, "rafty.transcode.#"),
        (RIP_EXCHANGE, "rafty.rip.*"),
    ] {
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
    }
    let mut events = ch
        .basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp)?;
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
        let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
            continue;
        };
        let Some(line) = describe(delivery.routing_key.as_str(), &body) else {
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
    use super::*;
    use serde_json::json;

    #[test]
    fn events_become_lines() {
        let p = describe(
            "rafty.transcode.progress",
            &json!({"id": "0123456789", "host": "a", "title": 2, "percent": 42.5, "fps": 210.4, "eta-secs": 75}),
        )
        .unwrap();
        assert_eq!(p.key, "0123456789#2");
        assert_eq!(p.percent, Some(42.5));
        assert_eq!(p.detail, "210 fps ETA 1m15s");
        let d = describe(
            "rafty.transcode.done",
            &json!({"id": "0123456789", "host": "a", "name": "X", "outputs": [{}]}),
        )
        .unwrap();
        assert!(d.finished && d.key == "0123456789#" && d.percent == Some(100.0));
        let r = describe(
            "rafty.rip.progress",
            &json!({"host": "h", "device": "/dev/sr0", "percent": 10.0, "rate": 2.0e7}),
        )
        .unwrap();
        assert_eq!(r.key, "h:/dev/sr0");
        assert_eq!(r.detail, "20.0 MB/s");
        assert!(describe("rafty.transcode.worker.heartbeat", &json!({})).is_none());
    }
}
