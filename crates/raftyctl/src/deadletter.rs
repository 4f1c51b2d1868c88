//! `raftyctl dead-letter`: read, fix and send back the jobs parked in `rafty.transcode.dead`.
//!
//! Reading a queue without consuming it: every message is fetched unacknowledged on one channel, the
//! ones acted on are acked after their copy is confirmed, and closing the channel gives the rest back
//! to the queue untouched. A requeued job goes to `rafty.rip` with its original routing key, its
//! failure headers removed and its attempt count back at 0.

use std::io::{BufRead, Write};

use clap::Subcommand;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{
    DEAD_QUEUE, HEADER_ATTEMPT, HEADER_ERROR, HEADER_ERROR_CLASS, HEADER_FAILED_AT, HEADER_HOST,
    HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY, RIP_EXCHANGE,
};
use serde::Serialize;
use serde_json::Value;

use crate::{Failure, close, open};

/// `raftyctl dead-letter` commands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// One line per parked job: id, failed at, attempt, host, class, reason
    List {
        /// One JSON object per job instead
        #[arg(long)]
        json: bool,
    },
    /// Everything about one parked job: its headers and its body
    Show {
        /// Job id (message id)
        id: String,
    },
    /// Send parked jobs back to the work queue, attempt count reset (after fixing their cause)
    Requeue {
        /// Job ids
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every parked job
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete every parked job
    Purge {
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

/// A parked job as read from the queue.
struct Parked {
    delivery: lapin::message::Delivery,
}

fn header(props: &BasicProperties, key: &str) -> Option<String> {
    let table = props.headers().as_ref()?;
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::FieldArray(deaths) => {
            // x-death: [{reason: ..., queue: ..., count: ...}, ...]; show the first reason.
            deaths.as_slice().first().and_then(|d| match d {
                AMQPValue::FieldTable(t) => t.inner().get("reason").map(|r| match r {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => format!("{other:?}"),
                }),
                _ => None,
            })
        }
        other => Some(format!("{other:?}")),
    }
}

impl Parked {
    fn id(&self) -> String {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .or_else(|| {
                /// Just the id of a body that may not be a whole job any more.
                #[derive(serde::Deserialize)]
                struct Id {
                    id: String,
                }
                serde_json::from_slice::<Id>(&self.delivery.data)
                    .ok()
                    .map(|v| v.id)
            })
            .unwrap_or_else(|| "-".to_owned())
    }

    /// The job's output name, when the body is (still) a job.
    fn name(&self) -> Option<String> {
        /// Just the name of a body that may not be a whole job.
        #[derive(serde::Deserialize)]
        struct Name {
            name: String,
        }
        serde_json::from_slice::<Name>(&self.delivery.data)
            .ok()
            .map(|v| v.name)
    }

    fn summary(&self) -> Summary {
        let p = &self.delivery.properties;
        let reason =
            header(p, HEADER_ERROR).unwrap_or_else(|| match header(p, "x-first-death-reason") {
                Some(r) => format!(
                    "dead-lettered by the broker: {r} (a worker crashed on it again and again?)"
                ),
                None => "no reason recorded".to_owned(),
            });
        Summary {
            id: self.id(),
            failed_at: header(p, HEADER_FAILED_AT),
            attempt: header(p, HEADER_ATTEMPT).and_then(|a| a.parse::<i64>().ok()),
            host: header(p, HEADER_HOST),
            class: header(p, HEADER_ERROR_CLASS),
            reason,
            routing_key: header(p, HEADER_ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| self.delivery.routing_key.as_str().to_owned()),
        }
    }
}

/// One parked job, as `list --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Summary {
    pub(crate) id: String,
    pub(crate) failed_at: Option<String>,
    pub(crate) attempt: Option<i64>,
    pub(crate) host: Option<String>,
    pub(crate) class: Option<String>,
    pub(crate) reason: String,
    pub(crate) routing_key: String,
}

/// A parked job's summary and its job's output name (when the body is a job): what the dashboard
/// lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Listed {
    #[serde(flatten)]
    pub(crate) summary: Summary,
    pub(crate) name: Option<String>,
}

/// `show`: the summary and the job's body.
#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    summary: Summary,
    job: Value,
}

/// A field of the tab-separated list: `null` when the header is missing.
fn cell<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "null".to_owned(), T::to_string)
}

/// Fetch every message of the dead queue, unacknowledged.
async fn browse(channel: &Channel) -> Result<Vec<Parked>, Failure> {
    browse_at_most(channel, usize::MAX).await
}

/// Fetch the first `limit` messages of the dead queue, unacknowledged.
async fn browse_at_most(channel: &Channel, limit: usize) -> Result<Vec<Parked>, Failure> {
    let mut out = Vec::new();
    while out.len() < limit {
        let got = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("reading {DEAD_QUEUE}: {e}")))?;
        match got {
            Some(m) => out.push(Parked {
                delivery: m.delivery,
            }),
            None => break,
        }
    }
    Ok(out)
}

/// The first `limit` parked jobs' summaries, in queue order, the queue left as it was: the
/// messages are fetched unacknowledged on `channel` and go back when the caller closes it (`list`
/// with no limit, and the dashboard).
pub(crate) async fn list(channel: &Channel, limit: usize) -> Result<Vec<Listed>, Failure> {
    Ok(browse_at_most(channel, limit)
        .await?
        .iter()
        .map(|p| Listed {
            summary: p.summary(),
            name: p.name(),
        })
        .collect())
}

/// `requeue`: send the parked jobs `ids` (or `all`) back where they first arrived, attempt count 0,
/// each acked only after its copy is confirmed; `requeued` is called with each id as it goes. Nothing
/// is requeued when one of `ids` is not parked (`exit::DATAERR`). The caller closes `channel`, which
/// gives the others back to the queue. Used by the command and by the dashboard's requeue button.
pub(crate) async fn requeue(
    channel: &Channel,
    publisher: &rafty_queue::Publisher,
    ids: &[String],
    all: bool,
    mut requeued: impl FnMut(&str),
) -> Result<Vec<String>, Failure> {
    let parked = browse(channel).await?;
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !parked.iter().any(|p| &p.id() == *id))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::new(
            exit::DATAERR,
            format!(
                "not in {DEAD_QUEUE}: {}; nothing was requeued",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut done = Vec::new();
    for p in parked.iter().filter(|p| all || ids.contains(&p.id())) {
        let props = &p.delivery.properties;
        let key = header(props, HEADER_ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| p.delivery.routing_key.as_str().to_owned());
        let exchange = header(props, HEADER_ORIGINAL_EXCHANGE)
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| RIP_EXCHANGE.to_owned());
        let mut headers = FieldTable::default();
        for (k, v) in props.headers().clone().unwrap_or_default().inner() {
            let k = k.as_str();
            if !(k.starts_with("x-rafty-")
                || k.starts_with("x-death")
                || k.starts_with("x-first-death")
                || k.starts_with("x-last-death"))
            {
                headers.insert(k.into(), v.clone());
            }
        }
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
        publisher
            .publish(
                &exchange,
                &key,
                &p.delivery.data,
                props.clone().with_headers(headers),
                true,
            )
            .await
            .map_err(|e| {
                Failure::new(exit::UNAVAILABLE, format!("{}: not requeued: {e}", p.id()))
            })?;
        p.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| {
                Failure::new(
                    exit::UNAVAILABLE,
                    format!("{}: requeued but still parked: {e}", p.id()),
                )
            })?;
        requeued(&p.id());
        done.push(p.id());
    }
    Ok(done)
}

pub(crate) async fn run(loaded: &Loaded, cmd: DeadLetterCommand) -> Result<(), Failure> {
    let (conn, publisher, _) = open(loaded).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let result = async {
        match cmd {
            DeadLetterCommand::List { json } => {
                for Listed { summary: s, .. } in list(&channel, usize::MAX).await? {
                    if json {
                        println!("{}", serde_json::to_string(&s).expect("json"));
                    } else {
                        println!(
                            "{}\t{}\tattempt {}\t{}\t{}\t{}",
                            s.id,
                            cell(&s.failed_at),
                            cell(&s.attempt),
                            cell(&s.host),
                            cell(&s.class),
                            s.reason
                        );
                    }
                }
                Ok(())
            }
            DeadLetterCommand::Show { id } => {
                let parked = browse(&channel).await?;
                let p = parked.iter().find(|p| p.id() == id).ok_or_else(|| {
                    Failure::new(exit::DATAERR, format!("no parked job {id} in {DEAD_QUEUE}"))
                })?;
                let body: Value = serde_json::from_slice(&p.delivery.data).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&p.delivery.data).into_owned())
                });
                let shown = Shown {
                    summary: p.summary(),
                    job: body,
                };
                println!("{}", serde_json::to_string_pretty(&shown).expect("json"));
                Ok(())
            }
            DeadLetterCommand::Requeue { ids, all } => {
                match requeue(&channel, &publisher, &ids, all, |id| println!("{id}")).await {
                    Err(f) if f.code == exit::DATAERR => {
                        // Another client browsing the queue (`raftyctl dead-letter list`, a
                        // dashboard) holds its messages until it closes its channel: look once
                        // more, a moment later, on a fresh channel (this one holds them now).
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        let again = conn
                            .create_channel()
                            .await
                            .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
                        let r = requeue(&again, &publisher, &ids, all, |id| println!("{id}")).await;
                        let _ = again.close(200, "raftyctl".into()).await;
                        r.map(|_| ())
                    }
                    r => r.map(|_| ()),
                }
            }
            DeadLetterCommand::Purge { yes } => {
                let queue = channel
                    .queue_declare(
                        DEAD_QUEUE.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
                let n = queue.message_count();
                if n == 0 {
                    eprintln!("raftyctl: {DEAD_QUEUE} is empty");
                    return Ok(());
                }
                if !yes {
                    eprint!("Delete {n} parked jobs from {DEAD_QUEUE} for good? [y/N] ");
                    let _ = std::io::stderr().flush();
                    let mut answer = String::new();
                    let _ = std::io::stdin().lock().read_line(&mut answer);
                    if !matches!(answer.trim(), "y" | "Y" | "yes") {
                        return Err(Failure::new(1, "not purged"));
                    }
                }
                let purged = channel
                    .queue_purge(DEAD_QUEUE.into(), QueuePurgeOptions::default())
                    .await
                    .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
                eprintln!("raftyctl: purged {purged} parked jobs");
                Ok(())
            }
        }
    }
    .await;
    close(&conn).await;
    result
}
