//! `raftyctl status`: the queues and the workers, in about a second.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rafty_core::config::Loaded;
use rafty_core::names::{DEAD_QUEUE, WORK_QUEUE};
use rafty_queue::Topology;
use serde_json::{Value, json};

use crate::{EXIT_UNAVAILABLE, Failure, close, open};

/// How long workers get to answer.
const WAIT: Duration = Duration::from_millis(1000);

pub(crate) async fn run(loaded: &Loaded, as_json: bool) -> Result<(), Failure> {
    let (conn, publisher, url) = open(loaded).await?;
    let topology = Topology::from_config(&loaded.config.transcode);
    let mut names = vec![WORK_QUEUE.to_owned()];
    names.extend(
        (0..topology.retry_delays.len() as u32).filter_map(|i| topology.retry_queue_for(i)),
    );
    names.push(DEAD_QUEUE.to_owned());
    let mut queues = Vec::new();
    for name in &names {
        let q = publisher
            .channel()
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Failure::new(EXIT_UNAVAILABLE, format!("{name}: {e}")))?;
        queues.push(
            json!({"name": name, "messages": q.message_count(), "consumers": q.consumer_count()}),
        );
    }
    let mut workers = rafty_queue::control::ask(&conn, &json!({"request": "status"}), WAIT)
        .await
        .map_err(|e| Failure::new(EXIT_UNAVAILABLE, e.to_string()))?;
    workers.sort_by_key(|w| {
        (
            w["host"].as_str().unwrap_or("").to_owned(),
            w["pid"].as_u64(),
        )
    });
    close(&conn).await;

    if as_json {
        println!(
            "{}",
            json!({"broker": url, "queues": queues, "workers": workers})
        );
        return Ok(());
    }
    println!("{:<32} {:>8} {:>9}", "QUEUE", "READY", "CONSUMERS");
    for q in &queues {
        let n = |k: &str| q[k].as_u64().unwrap_or(0);
        println!(
            "{:<32} {:>8} {:>9}",
            q["name"].as_str().unwrap_or(""),
            n("messages"),
            n("consumers")
        );
    }
    println!();
    println!("WORKERS ({})", workers.len());
    for w in &workers {
        println!("  {}", describe(w));
    }
    Ok(())
}

fn describe(w: &Value) -> String {
    let head = format!(
        "{} (pid {}) {}",
        w["host"].as_str().unwrap_or("?"),
        w["pid"],
        w["state"].as_str().unwrap_or("?")
    );
    match w.get("job").filter(|j| !j.is_null()) {
        Some(job) => {
            let mut s = format!(
                "{head}: {} ({})",
                job["name"].as_str().unwrap_or("?"),
                job["id"].as_str().unwrap_or("?")
            );
            if let Some(t) = job["title"].as_u64() {
                s.push_str(&format!(" title {t}"));
            }
            if let Some(p) = job["percent"].as_f64() {
                s.push_str(&format!(" {p:.1} %"));
            }
            if let Some(f) = job["fps"].as_f64() {
                s.push_str(&format!(" {f:.0} fps"));
            }
            s
        }
        None => head,
    }
}

/// `raftyctl drain HOST` / `resume HOST`: ask the workers on HOST (`*`: all) to stop taking jobs
/// after their current one, or to start again; prints the state each reports.
pub(crate) async fn steer(loaded: &Loaded, request: &str, host: &str) -> Result<(), Failure> {
    let (conn, _publisher, _) = open(loaded).await?;
    let answers =
        rafty_queue::control::ask(&conn, &json!({"request": request, "host": host}), WAIT)
            .await
            .map_err(|e| Failure::new(EXIT_UNAVAILABLE, e.to_string()));
    close(&conn).await;
    let answers = answers?;
    if answers.is_empty() {
        return Err(Failure::new(
            1,
            format!(
                "no worker on {host:?} answered within a second; `raftyctl status` lists the live ones"
            ),
        ));
    }
    for w in &answers {
        println!("{}", describe(w));
    }
    Ok(())
}
