//! From what became of a delivery to what the broker must do with it: [`verdict`] decides (a pure
//! function, table-tested), [`settle`] does it. Every copy (retry rung, dead letter, `done` event) is
//! confirmed before the original delivery is acked, so a crash in between duplicates a job but never
//! loses one.

use lapin::options::{BasicAckOptions, BasicNackOptions};
use rafty_core::names::{
    DEAD_EXCHANGE, HEADER_ERROR, HEADER_ERROR_CLASS, HEADER_FAILED_AT, HEADER_HOST,
};
use rafty_core::wire::{self, Event};
use rafty_core::{Class, Failure, classify};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::warn;

use crate::consumer::Incoming;
use crate::headers::{MAX_REASON_BYTES, bounded, copy_properties};
use crate::{Error, Publisher, Topology};

/// What became of a delivery.
#[derive(Debug)]
pub enum Outcome {
    /// The job's outputs are in place; the `done` event is published (confirmed) before the ack.
    Done(wire::Done),
    /// The job was split into title jobs, each published and confirmed; the `split` event is
    /// published before the ack.
    Split(wire::Split),
    /// Consumed, with nothing to announce (an event a notifier delivered or ignored).
    Consumed,
    /// Give the delivery back untouched, with no `failed` event (a notifier stopped mid-delivery).
    Release,
    /// The job failed; [`verdict`] decides what happens next.
    Failed(Failure),
}

/// What the broker must do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Acknowledge it (after publishing the outcome's event, if it has one).
    Ack,
    /// Copy it to this retry rung with the attempt + 1, then ack.
    Retry {
        /// The rung's queue.
        queue: String,
    },
    /// Copy it to the dead-letter exchange with the reason, then ack.
    DeadLetter {
        /// `permanent`, or `retryable` when the ladder ran out.
        class: Class,
        /// The reason for `x-rafty-error`.
        reason: String,
    },
    /// Nack it with requeue: not the job's fault.
    Requeue,
}

/// The one place that decides between ack, retry rung, dead letter and requeue, from the outcome, the
/// attempt that produced it (0 = first) and the retry ladder.
pub fn verdict(outcome: &Outcome, attempt: u32, topology: &Topology) -> Action {
    let failure = match outcome {
        Outcome::Done(_) | Outcome::Split(_) | Outcome::Consumed => return Action::Ack,
        Outcome::Release => return Action::Requeue,
        Outcome::Failed(failure) => failure,
    };
    match classify(failure) {
        Class::Requeue => Action::Requeue,
        Class::Retryable => match topology.retry_queue_for(attempt) {
            Some(queue) => Action::Retry { queue },
            None => Action::DeadLetter {
                class: Class::Retryable,
                reason: format!(
                    "{failure} (gave up after {} attempts; the retry ladder has {} rungs)",
                    u64::from(attempt) + 1,
                    topology.retry_delays.len()
                ),
            },
        },
        Class::Permanent => Action::DeadLetter {
            class: Class::Permanent,
            reason: failure.to_string(),
        },
    }
}

/// How a delivery was settled, for statistics and metrics: what was done, not decided again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acked after the `done` event was confirmed; `skipped` when every output was already there.
    Done {
        /// Nothing was encoded.
        skipped: bool,
    },
    /// Acked after its title jobs and the `split` event were confirmed.
    Split,
    /// Acked with nothing to announce.
    Consumed,
    /// Copied to this retry queue (confirmed), then acked.
    Retried(String),
    /// Copied to the dead-letter exchange (confirmed), then acked.
    Dead,
    /// Nacked with requeue.
    Requeued,
}

/// Do what [`verdict`] says with `incoming`, then announce a failure on the events exchange.
pub async fn settle(
    outcome: Outcome,
    incoming: &Incoming,
    publisher: &Publisher,
    topology: &Topology,
    host: &str,
) -> Result<Settled, Error> {
    let action = verdict(&outcome, incoming.attempt, topology);
    let failure = match outcome {
        Outcome::Done(done) => {
            let skipped = done.skipped;
            publisher.publish_event(&Event::Done(done)).await?;
            ack(incoming).await?;
            return Ok(Settled::Done { skipped });
        }
        Outcome::Split(split) => {
            publisher.publish_event(&Event::Split(split)).await?;
            ack(incoming).await?;
            return Ok(Settled::Split);
        }
        Outcome::Consumed => {
            ack(incoming).await?;
            return Ok(Settled::Consumed);
        }
        Outcome::Release => {
            requeue(incoming).await?;
            return Ok(Settled::Requeued);
        }
        Outcome::Failed(failure) => failure,
    };
    let (settled, next) = match &action {
        Action::Ack => unreachable!("a failure is never simply acked"),
        Action::Requeue => {
            requeue(incoming).await?;
            (Settled::Requeued, wire::NEXT_REQUEUED.to_owned())
        }
        Action::Retry { queue } => {
            let props = copy_properties(incoming, incoming.attempt + 1, &[]);
            publisher
                .publish("", queue, incoming.data(), props, true)
                .await?;
            ack(incoming).await?;
            (Settled::Retried(queue.clone()), queue.clone())
        }
        Action::DeadLetter { class, reason } => {
            let now = OffsetDateTime::now_utc().format(&Rfc3339).expect("formats");
            let props = copy_properties(
                incoming,
                incoming.attempt,
                &[
                    (HEADER_ERROR_CLASS, class.as_str()),
                    (HEADER_ERROR, &bounded(reason, MAX_REASON_BYTES)),
                    (HEADER_HOST, host),
                    (HEADER_FAILED_AT, &now),
                ],
            );
            publisher
                .publish(DEAD_EXCHANGE, "", incoming.data(), props, true)
                .await?;
            ack(incoming).await?;
            (Settled::Dead, wire::NEXT_DEAD_LETTER.to_owned())
        }
    };
    let event = Event::Failed(wire::Failed {
        id: incoming.id(),
        name: incoming.job().as_ref().ok().map(|j| j.output.name.clone()),
        host: host.to_owned(),
        attempt: incoming.attempt,
        error_kind: failure.kind().to_owned(),
        error_class: classify(&failure).as_str().to_owned(),
        error: failure.to_string(),
        next,
    });
    if let Err(e) = publisher.publish_event(&event).await {
        warn!(error = %e, "could not announce the failure; the job itself is settled");
    }
    Ok(settled)
}

fn lost() -> Error {
    Error::Amqp {
        what: "settling the delivery",
        source: lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "the channel closed before the delivery was settled; the broker will redeliver it",
        )),
    }
}

async fn ack(incoming: &Incoming) -> Result<(), Error> {
    let ok = incoming
        .delivery()
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            what: "acknowledging the delivery",
            source,
        })?;
    if ok { Ok(()) } else { Err(lost()) }
}

async fn requeue(incoming: &Incoming) -> Result<(), Error> {
    let ok = incoming
        .delivery()
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .map_err(|source| Error::Amqp {
            what: "handing the delivery back (nack)",
            source,
        })?;
    if ok { Ok(()) } else { Err(lost()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ladder(rungs: u64) -> Topology {
        Topology {
            retry_delays: (1..=rungs).map(Duration::from_secs).collect(),
            delivery_limit: 10,
        }
    }

    fn failed(f: Failure) -> Outcome {
        Outcome::Failed(f)
    }

    #[test]
    fn verdict_table() {
        let disk_full = || failed(Failure::DiskFull("/media: no space".into()));
        let bad = || failed(Failure::BadMessage("missing field `id`".into()));
        let retry = |n: &str| Action::Retry {
            queue: format!("rafty.transcode.retry.{n}"),
        };
        let rows: Vec<(&str, Outcome, u32, Topology, Action)> = vec![
            ("consumed acks", Outcome::Consumed, 0, ladder(2), Action::Ack),
            ("released goes back", Outcome::Release, 3, ladder(2), Action::Requeue),
            ("shutdown requeues", failed(Failure::Shutdown), 0, ladder(2), Action::Requeue),
            ("first retryable: rung 1", disk_full(), 0, ladder(2), retry("1s")),
            ("second retryable: rung 2", disk_full(), 1, ladder(2), retry("2s")),
            (
                "ladder exhausted",
                disk_full(),
                2,
                ladder(2),
                Action::DeadLetter {
                    class: Class::Retryable,
                    reason: "disk full: /media: no space (gave up after 3 attempts; the retry ladder has 2 rungs)"
                        .into(),
                },
            ),
            (
                "no ladder: dead at once",
                disk_full(),
                0,
                ladder(0),
                Action::DeadLetter {
                    class: Class::Retryable,
                    reason: "disk full: /media: no space (gave up after 1 attempts; the retry ladder has 0 rungs)"
                        .into(),
                },
            ),
            (
                "permanent, whatever the attempt",
                bad(),
                0,
                ladder(4),
                Action::DeadLetter {
                    class: Class::Permanent,
                    reason: "bad job message: missing field `id`".into(),
                },
            ),
            (
                "an attempt past u32 range of rungs",
                disk_full(),
                u32::MAX,
                ladder(4),
                Action::DeadLetter {
                    class: Class::Retryable,
                    reason: format!(
                        "disk full: /media: no space (gave up after {} attempts; the retry ladder has 4 rungs)",
                        u64::from(u32::MAX) + 1
                    ),
                },
            ),
        ];
        for (what, outcome, attempt, topology, want) in rows {
            assert_eq!(verdict(&outcome, attempt, &topology), want, "{what}");
        }
    }
}
