//! `rafty-notify`, Rafty's notifier: a phone notification (ntfy), a webhook or a script when a disc is
//! done or failed, and nothing missed while the notifier is down.
//!
//! It declares its own durable quorum queue (`[notify] queue`, default `rafty.notify`), bound to the
//! `rafty.transcode` exchange with `rafty.transcode.done` and `.failed` and to `rafty.rip` with
//! `rafty.rip.done` and `.failed`, so events published while it is stopped wait for it. It declares the
//! rest of Rafty's topology as well (every program does), so the exchanges exist.
//!
//! It consumes that queue with prefetch 1 and hands each event to every target ([`target`]); the
//! delivery is acked only when every target took it. A target that fails is logged with the reason and
//! tried again after `retry-delay`, while the targets that already took the event are not sent it again.
//! That memory lives in the process (it also survives a reconnection to the broker), so delivery is
//! **at least once**: a notifier stopped or killed between two targets sends the event again to the
//! targets that had it once it is back. Events not listed in `[notify] events` are acked and dropped.
//!
//! A delivery waiting for a retry is held unacked; RabbitMQ's `consumer_timeout` (30 min by default)
//! closes the channel of a consumer that holds one longer, and the notifier then reconnects and gets the
//! event again, still remembering which targets had it.
//!
//! Configuration: [`config`] (and its note on the temporary way `[notify]` is read). [`run`] is the
//! whole notifier; `main.rs` parses flags, sets up logging and maps signals ([`signals`]).

pub mod config;
pub mod event;
pub mod signals;
pub mod target;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use rafty_queue::{Topology, connect, ensure, mask_url};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub use config::{EventKind, NotifyConfig, Settings};
pub use event::Event;
pub use target::{DeliveryError, Target};

/// Longest wait between two attempts to reach the broker.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Deliveries whose progress (targets that took them) is remembered across redeliveries.
const REMEMBERED: usize = 64;

/// Stop requests, mapped from signals by the binary.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Take no more events; finish the one in hand (its targets' current attempts), then exit.
    pub stop: CancellationToken,
    /// Stop now, even in the middle of a request (the event stays in the queue).
    pub abort: CancellationToken,
}

impl Shutdown {
    /// A shutdown that nothing has requested yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What the notifier did, for the last log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Events delivered to every target and acked.
    pub delivered: u64,
    /// Events acked without a notification (not in `[notify] events`, or not a JSON object).
    pub ignored: u64,
    /// Attempts to deliver to a target that failed.
    pub failed_attempts: u64,
}

/// Errors of one session with the broker; the notifier reconnects after each.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Queue(#[from] rafty_queue::Error),
    #[error("{what}: {source}")]
    Amqp {
        what: &'static str,
        source: lapin::Error,
    },
    #[error("the broker ended the consumer on {0}")]
    ConsumerEnded(String),
    #[error("the channel closed before the event was acked; the broker will deliver it again")]
    Lost,
}

fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
    move |source| SessionError::Amqp { what, source }
}

/// A delivery, as recognised when the broker hands it out again: its routing key and its body.
type DeliveryKey = (String, Vec<u8>);

/// Which targets already took each delivery in hand, by routing key and body, so that a retry or a
/// redelivery does not send an event twice to the same target.
#[derive(Default)]
struct Progress {
    entries: VecDeque<(DeliveryKey, BTreeSet<usize>)>,
}

impl Progress {
    fn done(&mut self, key: &DeliveryKey) -> &mut BTreeSet<usize> {
        if let Some(i) = self.entries.iter().position(|(k, _)| k == key) {
            return &mut self.entries[i].1;
        }
        if self.entries.len() >= REMEMBERED {
            self.entries.pop_front();
        }
        self.entries.push_back((key.clone(), BTreeSet::new()));
        &mut self.entries.back_mut().expect("just pushed").1
    }

    fn forget(&mut self, key: &DeliveryKey) {
        self.entries.retain(|(k, _)| k != key);
    }
}

struct Notifier {
    settings: Settings,
    targets: Vec<Target>,
    events: BTreeSet<EventKind>,
    agent: ureq::Agent,
    progress: Progress,
    stats: Stats,
}

enum Handled {
    /// Acked (delivered everywhere, or ignored).
    Acked,
    /// Stopped with the event unacked: it stays in the queue.
    Stopped,
}

/// Run the notifier until `shutdown` stops it. Returns what it did.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Stats {
    let notify = &settings.notify;
    let targets = target::targets(notify);
    info!(
        config = %settings.loaded.source_name(),
        broker = %mask_url(&settings.url),
        queue = %notify.queue,
        targets = %targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
        events = %notify.event_set().iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        "rafty-notify starting"
    );
    let mut notifier = Notifier {
        events: notify.event_set(),
        agent: target::http_agent(notify.timeout),
        targets,
        settings,
        progress: Progress::default(),
        stats: Stats::default(),
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        if shutdown.stop.is_cancelled() {
            break;
        }
        let mut consuming = false;
        match notifier.session(&shutdown, &mut consuming).await {
            Ok(()) => break,
            Err(e) => {
                if consuming {
                    backoff = Duration::from_millis(500);
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
    info!(stats = ?notifier.stats, "rafty-notify stopped");
    notifier.stats
}

/// Declare the notifier's quorum queue and bind it to the four events.
async fn declare_queue(channel: &Channel, queue: &str) -> Result<(), SessionError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|source| {
            rafty_queue::Error::Declare {
                what: format!("queue {queue}"),
                source,
                hint: " (it must be a durable quorum queue: delete it while it is empty, or set [notify] queue)",
            }
        })?;
    for kind in EventKind::ALL {
        let key = kind.routing_key();
        channel
            .queue_bind(
                queue.into(),
                kind.exchange().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| rafty_queue::Error::Declare {
                what: format!("binding {} -[{key}]-> {queue}", kind.exchange()),
                source,
                hint: "",
            })?;
    }
    Ok(())
}

async fn close(conn: &Connection) {
    let _ = conn.close(200, "rafty-notify stopping".into()).await;
}

impl Notifier {
    async fn session(
        &mut self,
        shutdown: &Shutdown,
        consuming: &mut bool,
    ) -> Result<(), SessionError> {
        let host = self.settings.loaded.host();
        let queue = self.settings.notify.queue.clone();
        let tag = format!("rafty-notify@{host}-{}", std::process::id());
        let topology = Topology::from_config(&self.settings.loaded.config.transcode);
        let setup = async {
            let conn = connect(&self.settings.url, &format!("rafty-notify@{host}")).await?;
            let channel = conn
                .create_channel()
                .await
                .map_err(amqp("opening a channel"))?;
            ensure(&conn, &topology).await?;
            declare_queue(&channel, &queue).await?;
            // Quorum queues refuse global QoS: one unacked event for this consumer.
            channel
                .basic_qos(1, BasicQosOptions { global: false })
                .await
                .map_err(amqp("setting prefetch"))?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp("consuming the notification queue"))?;
            Ok::<_, SessionError>((conn, channel, consumer))
        };
        // A broker that does not answer must not delay a stop.
        let (conn, channel, mut consumer) = tokio::select! {
            r = setup => r?,
            _ = shutdown.stop.cancelled() => return Ok(()),
        };
        *consuming = true;
        info!(url = %mask_url(&self.settings.url), queue = %queue, "connected; waiting for events");

        loop {
            let delivery = tokio::select! {
                biased;
                _ = shutdown.stop.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(source)) => return Err(SessionError::Amqp { what: "receiving an event", source }),
                    None => return Err(SessionError::ConsumerEnded(queue)),
                },
            };
            match self.handle(delivery, &channel, shutdown).await? {
                Handled::Acked if !shutdown.stop.is_cancelled() => {}
                Handled::Acked | Handled::Stopped => break,
            }
        }
        info!("stopping: no more events will be taken");
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        close(&conn).await;
        Ok(())
    }

    async fn handle(
        &mut self,
        delivery: Delivery,
        channel: &Channel,
        shutdown: &Shutdown,
    ) -> Result<Handled, SessionError> {
        let routing_key = delivery.routing_key.as_str().to_owned();
        let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data)
            .ok()
            .filter(serde_json::Value::is_object);
        let job_id = body
            .as_ref()
            .and_then(|b| b.get("id").or_else(|| b.get("job")))
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_else(|| "-".to_owned());
        let span = info_span!(
            "event",
            routing_key = %routing_key,
            message_id = %message_id,
            job_id = %job_id,
            redelivered = delivery.redelivered,
        );
        async {
            let kind = EventKind::from_routing_key(&routing_key);
            let (kind, body) = match (kind, body) {
                (Some(kind), Some(body)) if self.events.contains(&kind) => (kind, body),
                (Some(kind), Some(_)) => {
                    debug!(event = %kind, "not in [notify] events: acked without a notification");
                    self.stats.ignored += 1;
                    return ack(&delivery).await.map(|()| Handled::Acked);
                }
                (None, _) => {
                    warn!("not an event the notifier knows: acked without a notification");
                    self.stats.ignored += 1;
                    return ack(&delivery).await.map(|()| Handled::Acked);
                }
                (Some(_), None) => {
                    warn!(bytes = delivery.data.len(), "the body is not a JSON object: acked without a notification");
                    self.stats.ignored += 1;
                    return ack(&delivery).await.map(|()| Handled::Acked);
                }
            };
            let event = Event { kind, routing_key: routing_key.clone(), body };
            let key = (routing_key.clone(), delivery.data.clone());
            loop {
                for (i, target) in self.targets.iter().enumerate() {
                    if self.progress.done(&key).contains(&i) {
                        continue;
                    }
                    let attempt = target.deliver(&event, &self.agent, self.settings.notify.timeout);
                    let result = tokio::select! {
                        r = attempt => r,
                        _ = shutdown.abort.cancelled() => {
                            warn!(to = %target, "stopped in the middle of a notification; the event stays in the queue");
                            return Ok(Handled::Stopped);
                        }
                    };
                    match result {
                        Ok(()) => {
                            info!(to = %target, "notified");
                            self.progress.done(&key).insert(i);
                        }
                        Err(e) => {
                            self.stats.failed_attempts += 1;
                            warn!(
                                to = %target,
                                error = %e,
                                retry_in_secs = self.settings.notify.retry_delay.as_secs_f64(),
                                "notification failed; it will be tried again"
                            );
                        }
                    }
                }
                if self.progress.done(&key).len() == self.targets.len() {
                    ack(&delivery).await?;
                    self.progress.forget(&key);
                    self.stats.delivered += 1;
                    return Ok(Handled::Acked);
                }
                if shutdown.stop.is_cancelled() {
                    warn!("stopping before every target had the event; it stays in the queue and is sent again to those that did not");
                    return Ok(Handled::Stopped);
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.notify.retry_delay) => {}
                    _ = shutdown.stop.cancelled() => {
                        warn!("stopping before every target had the event; it stays in the queue and is sent again to those that did not");
                        return Ok(Handled::Stopped);
                    }
                }
                if !channel.status().connected() {
                    // consumer_timeout or a broken link: the broker hands the event out again, and the
                    // targets that had it are remembered.
                    return Err(SessionError::Lost);
                }
            }
        }
        .instrument(span)
        .await
    }
}

async fn ack(delivery: &Delivery) -> Result<(), SessionError> {
    let ok = delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(amqp("acknowledging the event"))?;
    if ok { Ok(()) } else { Err(SessionError::Lost) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_remembered_per_delivery_and_bounded() {
        let mut p = Progress::default();
        let a = ("rafty.transcode.done".to_owned(), b"{\"id\":1}".to_vec());
        let b = ("rafty.transcode.failed".to_owned(), b"{\"id\":1}".to_vec());
        p.done(&a).insert(0);
        assert!(p.done(&a).contains(&0));
        assert!(p.done(&b).is_empty());
        p.forget(&a);
        assert!(p.done(&a).is_empty());
        for i in 0..(REMEMBERED + 5) {
            p.done(&("k".to_owned(), vec![i as u8])).insert(1);
        }
        assert_eq!(p.entries.len(), REMEMBERED);
    }
}
