//! The broker topology (docs/protocol.md, "Topology"), declared idempotently.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use rafty_core::config::format_duration;
use rafty_core::names::{
    CONTROL_EXCHANGE, DEAD_EXCHANGE, DEAD_QUEUE, EVENTS_EXCHANGE, RIP_EXCHANGE, WORK_QUEUE,
    retry_queue, rip_routing_key,
};
use rafty_core::{Media, config::TranscodeConfig};

use crate::Error;

/// The parts of the topology that come from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The retry ladder, first rung first.
    pub retry_delays: Vec<Duration>,
    /// `x-delivery-limit` of the work queue.
    pub delivery_limit: u32,
}

impl Topology {
    /// The topology a worker with this configuration uses.
    pub fn from_config(t: &TranscodeConfig) -> Self {
        Topology {
            retry_delays: t.retry_delays.clone(),
            delivery_limit: t.delivery_limit,
        }
    }

    /// Name of the retry queue for the given attempt (0 = first retry), if the ladder has that rung.
    pub fn retry_queue_for(&self, attempt: u32) -> Option<String> {
        self.retry_delays
            .get(attempt as usize)
            .map(|d| retry_queue(&format_duration(*d)))
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("quorum"));
    for (k, v) in extra {
        args.insert((*k).into(), v.clone());
    }
    args
}

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

const MISMATCH_HINT: &str = " (a queue that exists with other arguments is refused: compare delivery-limit and \
     retry-delays with the other machines' configs, or delete the queue while it is empty)";

/// How long [`ensure`] waits for the broker to answer the declarations. Declaring a queue that
/// exists asks its leader for the queue's counts; on a cluster whose node holding that leader is
/// frozen (not dead: the others do not elect a new leader before the node is declared down, up to
/// `net_ticktime`, 60 s), the answer does not come. Declaring what does not exist yet answers at once.
pub const DECLARE_STALL: Duration = Duration::from_secs(2);

/// How [`ensure`] made sure of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Every exchange, queue and binding was declared.
    Declared,
    /// The broker did not answer the declarations within [`DECLARE_STALL`]: a queue that exists has
    /// a leader that does not answer (a frozen node). The topology is taken as it is.
    Stalled {
        /// The step that did not answer.
        what: String,
    },
    /// This user may not declare (it has no configure right on the named entity); every exchange and
    /// queue was found to exist instead.
    Checked {
        /// The first entity the broker refused to let this user declare.
        refused: String,
    },
}

/// Make sure the topology exists, on channels of its own: declare it, or, for a user with narrow
/// rights (only the admin role may configure, see `scripts/broker-users`), check that the admin
/// declared it. Bindings cannot be checked passively; `raftyctl setup` makes them.
pub async fn ensure(conn: &Connection, topology: &Topology) -> Result<Ensured, Error> {
    let open = || async {
        conn.create_channel().await.map_err(|source| Error::Amqp {
            what: "opening a channel to declare the topology",
            source,
        })
    };
    let channel = open().await?;
    let declared = match tokio::time::timeout(DECLARE_STALL, declare(&channel, topology)).await {
        Ok(r) => r,
        Err(_) => {
            // The channel is stuck on the broker's side: leave it, closing would wait as long.
            tracing::warn!(
                within_ms = DECLARE_STALL.as_millis() as u64,
                "the broker did not answer the topology's declarations (a queue's leader on a node that does not answer?); going on with the topology as it is"
            );
            return Ok(Ensured::Stalled {
                what: "declaring the topology".into(),
            });
        }
    };
    let refused = match declared {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            return Ok(Ensured::Declared);
        }
        Err(Error::Declare { what, source, .. }) if access_refused(&source) => what,
        Err(e) => return Err(e),
    };
    let channel = open().await?;
    check(&channel).await.map_err(|e| match e {
        Error::Declare { what, source, .. } => Error::Declare {
            what,
            source,
            hint: " (this user may not declare the topology, and it does not exist yet: run `raftyctl setup` \
                   with the admin user first)",
        },
        e => e,
    })?;
    let _ = channel.close(200, "checked".into()).await;
    tracing::debug!(%refused, "no right to declare the topology; checked that it exists");
    Ok(Ensured::Checked { refused })
}

fn access_refused(e: &lapin::Error) -> bool {
    e.to_string().contains("ACCESS_REFUSED")
}

/// Check passively that the exchanges, the work queue and the dead-letter queue exist (no right
/// needed).
async fn check(channel: &Channel) -> Result<(), Error> {
    for (name, kind) in [
        (RIP_EXCHANGE, ExchangeKind::Topic),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_EXCHANGE, ExchangeKind::Fanout),
        (CONTROL_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("exchange {name}"),
                source,
                hint: "",
            })?;
    }
    // Retry rungs are the workers' business (their config names them): a worker checks its own with
    // [`check_retry_rungs`]; rip, the notifier and raftyctl need not agree with it.
    for name in [DEAD_QUEUE, WORK_QUEUE] {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("queue {name}"),
                source,
                hint: "",
            })?;
    }
    Ok(())
}

/// For a worker whose user may not declare: check that every retry queue of its ladder exists (the
/// admin's `raftyctl setup` made them from its own config; the two configs must agree).
pub async fn check_retry_rungs(conn: &Connection, topology: &Topology) -> Result<(), Error> {
    let channel = conn.create_channel().await.map_err(|source| Error::Amqp {
        what: "opening a channel to check the retry queues",
        source,
    })?;
    for name in (0..topology.retry_delays.len()).filter_map(|i| topology.retry_queue_for(i as u32))
    {
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("retry queue {name}"),
                source,
                hint: " (this worker's retry-delays name a queue the admin did not declare: give the admin's \
                       config the same [transcode] retry-delays and run `raftyctl setup` again)",
            })?;
    }
    let _ = channel.close(200, "checked".into()).await;
    Ok(())
}

/// Declare every exchange, queue and binding. Safe to call any number of times from any program.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), Error> {
    let exchange = |name: &'static str, kind: ExchangeKind| async move {
        channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("exchange {name}"),
                source,
                hint: "",
            })
    };
    exchange(RIP_EXCHANGE, ExchangeKind::Topic).await?;
    exchange(EVENTS_EXCHANGE, ExchangeKind::Topic).await?;
    exchange(DEAD_EXCHANGE, ExchangeKind::Fanout).await?;
    exchange(CONTROL_EXCHANGE, ExchangeKind::Fanout).await?;

    let queue = |name: String, args: FieldTable| async move {
        channel
            .queue_declare(name.as_str().into(), DURABLE_QUEUE, args)
            .await
            .map_err(|source| Error::Declare {
                what: format!("queue {name}"),
                source,
                hint: MISMATCH_HINT,
            })
    };
    let at_least_once = [
        ("x-dead-letter-strategy", long("at-least-once")),
        ("x-overflow", long("reject-publish")),
    ];
    queue(DEAD_QUEUE.to_owned(), quorum_args(&[])).await?;
    queue(
        WORK_QUEUE.to_owned(),
        quorum_args(&[
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
            ),
            ("x-dead-letter-exchange", long(DEAD_EXCHANGE)),
            at_least_once[0].clone(),
            at_least_once[1].clone(),
        ]),
    )
    .await?;
    for (i, delay) in topology.retry_delays.iter().enumerate() {
        let name = topology.retry_queue_for(i as u32).expect("rung exists");
        queue(
            name,
            quorum_args(&[
                (
                    "x-message-ttl",
                    AMQPValue::LongLongInt(delay.as_millis() as i64),
                ),
                ("x-dead-letter-exchange", long("")),
                ("x-dead-letter-routing-key", long(WORK_QUEUE)),
                at_least_once[0].clone(),
                at_least_once[1].clone(),
            ]),
        )
        .await?;
    }

    let bind = |queue: &'static str, exchange: &'static str, key: String| async move {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Declare {
                what: format!("binding {exchange} -[{key}]-> {queue}"),
                source,
                hint: "",
            })
    };
    bind(WORK_QUEUE, RIP_EXCHANGE, rip_routing_key(Media::Dvd)).await?;
    bind(WORK_QUEUE, RIP_EXCHANGE, rip_routing_key(Media::Bluray)).await?;
    bind(DEAD_QUEUE, DEAD_EXCHANGE, String::new()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rung_names_follow_the_delays() {
        let t = Topology {
            retry_delays: vec![
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_millis(1500),
            ],
            delivery_limit: 5,
        };
        assert_eq!(
            t.retry_queue_for(0).as_deref(),
            Some("rafty.transcode.retry.30s")
        );
        assert_eq!(
            t.retry_queue_for(1).as_deref(),
            Some("rafty.transcode.retry.5m")
        );
        assert_eq!(
            t.retry_queue_for(2).as_deref(),
            Some("rafty.transcode.retry.1500ms")
        );
        assert_eq!(t.retry_queue_for(3), None);
    }
}
