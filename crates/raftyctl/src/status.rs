//! `raftyctl status`: the queues and the workers, in about a second.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{DEAD_QUEUE, WORK_QUEUE};
use rafty_core::wire::{ControlRequest, WorkerStatus};
use rafty_queue::Topology;
use serde::Serialize;

use crate::{Failure, close, open};

/// How long workers get to answer.
pub(crate) const WAIT: Duration = Duration::from_millis(1000);

/// `raftyctl status --json`.
#[derive(Serialize)]
struct Report {
    broker: String,
    queues: Vec<Depth>,
    workers: Vec<WorkerStatus>,
    /// From `[broker] management-url`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<crate::members::Members>,
}

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Depth {
    pub(crate) name: String,
    pub(crate) messages: u32,
    pub(crate) consumers: u32,
}

/// The queues `status` shows, in order: the work queue, each retry rung, the dead letters.
pub(crate) fn queue_names(topology: &Topology) -> Vec<String> {
    let mut names = vec![WORK_QUEUE.to_owned()];
    names.extend(
        (0..topology.retry_delays.len() as u32).filter_map(|i| topology.retry_queue_for(i)),
    );
    names.push(DEAD_QUEUE.to_owned());
    names
}

/// Each queue's depth and consumers, by passive declaration on `channel` (which the broker closes
/// when a queue is missing).
pub(crate) async fn depths(
    channel: &lapin::Channel,
    names: &[String],
) -> Result<Vec<Depth>, Failure> {
    let mut queues = Vec::new();
    for name in names {
        let q = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("{name}: {e}")))?;
        queues.push(Depth {
            name: name.clone(),
            messages: q.message_count(),
            consumers: q.consumer_count(),
        });
    }
    Ok(queues)
}

pub(crate) async fn run(loaded: &Loaded, as_json: bool) -> Result<(), Failure> {
    let (conn, publisher, url) = open(loaded).await?;
    let topology = Topology::from_config(&loaded.config.transcode);
    let names = queue_names(&topology);
    let queues = depths(&publisher.channel(), &names).await?;
    let mut workers = rafty_queue::control::ask(&conn, &ControlRequest::Status, WAIT)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    workers.sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    close(&conn).await;

    if as_json {
        let members = crate::fetch_members(loaded, &url, &names).await?;
        let report = Report {
            broker: url,
            queues,
            workers,
            members,
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
        return Ok(());
    }
    println!("{:<32} {:>8} {:>9}", "QUEUE", "READY", "CONSUMERS");
    for q in &queues {
        println!("{:<32} {:>8} {:>9}", q.name, q.messages, q.consumers);
    }
    println!();
    println!("WORKERS ({})", workers.len());
    for w in &workers {
        println!("  {}", describe(w));
    }
    crate::show_members(loaded, &url, &names).await?;
    Ok(())
}

fn describe(w: &WorkerStatus) -> String {
    let head = format!("{} (pid {}) {}", w.host, w.pid, w.state.as_str());
    match &w.job {
        Some(job) => {
            let mut s = format!("{head}: {} ({})", job.name, job.id);
            if let Some(t) = job.title {
                s.push_str(&format!(" title {t}"));
            }
            if let Some(stage) = &job.stage
                && stage != "encode"
            {
                s.push_str(&format!(" {stage}ing"));
            }
            if let Some(p) = job.percent {
                s.push_str(&format!(" {p:.1} %"));
            }
            if let Some(f) = job.fps {
                s.push_str(&format!(" {f:.0} fps"));
            }
            s
        }
        None => head,
    }
}

/// `raftyctl drain HOST` / `resume HOST`: ask the workers on HOST (`*`: all) to stop taking jobs
/// after their current one, or to start again; prints the state each reports.
pub(crate) async fn steer(loaded: &Loaded, request: &ControlRequest) -> Result<(), Failure> {
    let host = match request {
        ControlRequest::Drain { host } | ControlRequest::Resume { host } => host.as_str(),
        ControlRequest::Status => "*",
    };
    let (conn, _publisher, _) = open(loaded).await?;
    let answers = rafty_queue::control::ask(&conn, request, WAIT)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()));
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

#[cfg(test)]
mod tests {
    use rafty_core::wire::{Activity, WorkerState, WorkerStatus};

    use super::*;

    #[test]
    fn a_worker_line_says_what_its_job_is_doing() {
        let job = |stage: Option<&str>, percent| Activity {
            id: uuid::Uuid::nil(),
            name: "Film".into(),
            source: "/srv/iso/Film.iso".into(),
            attempt: 0,
            started_at: "2026-12-02T00:00:00Z".into(),
            title: None,
            percent,
            fps: None,
            eta_secs: None,
            stage: stage.map(str::to_owned),
        };
        let status = |job| WorkerStatus {
            host: "laptop".into(),
            app: "transcoded".into(),
            version: "0".into(),
            handbrake: "H".into(),
            pid: 7,
            uptime_secs: 1,
            state: WorkerState::Working,
            job: Some(job),
        };
        let line = describe(&status(job(Some("download"), Some(12.5))));
        assert!(
            line.ends_with("Film (00000000-0000-0000-0000-000000000000) downloading 12.5 %"),
            "{line}"
        );
        let line = describe(&status(job(Some("upload"), Some(99.0))));
        assert!(line.contains("uploading 99.0 %"), "{line}");
        let line = describe(&status(job(Some("encode"), Some(40.0))));
        assert!(line.ends_with(") 40.0 %"), "{line}");
    }
}
