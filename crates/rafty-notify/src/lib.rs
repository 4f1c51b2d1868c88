//! `rafty-notify`, Rafty's notifier: a phone notification (ntfy), a webhook or a script when a disc is
//! done or failed, and nothing missed while the notifier is down.
//!
//! It declares its own durable quorum queue (`[notify] queue`, default `rafty.notify`), bound to the
//! `rafty.transcode` exchange with `rafty.transcode.done` and `.failed` (and rafty-replicate's
//! `rafty.replicate.away` and `.audit`) and to `rafty.rip` with `rafty.rip.done` and `.failed`, so events published while it is stopped wait for it. It declares the
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
//! whole notifier; `main.rs` is glue over the program prelude (`rafty_program`: flags, logging,
//! signals).

pub mod config;
pub mod event;
pub mod target;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use rafty_core::wire;
use rafty_queue::{
    Broker, ConsumerOptions, Ensured, Incoming, Outcome, Processor, Publisher, SessionTasks,
    Settled, Topology,
};
use tracing::{Span, debug, info, info_span, warn};

pub use config::{EventKind, NotifyConfig, Settings};
pub use event::Event;
pub use rafty_queue::Shutdown;
pub use target::{DeliveryError, Target};

/// Longest wait between two attempts to reach the broker.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Deliveries whose progress (targets that took them) is remembered across redeliveries.
const REMEMBERED: usize = 64;

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

/// The notifier's [`Processor`] for the shared consumer loop.
struct Notifier {
    settings: Settings,
    targets: Vec<Target>,
    events: BTreeSet<EventKind>,
    agent: ureq::Agent,
    shutdown: Shutdown,
    progress: Mutex<Progress>,
    stats: Mutex<Stats>,
}

/// Run the notifier until `shutdown` stops it. Returns what it did.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Stats {
    let notify = &settings.notify;
    let targets = target::targets(notify);
    // The URLs were checked when the settings were read (Loaded::amqp_urls), so this cannot fail.
    let broker = Broker::new(settings.urls.clone()).expect("broker URLs checked by amqp_urls");
    info!(
        config = %settings.loaded.source_name(),
        broker = %broker.shown(),
        queue = %notify.queue,
        targets = %targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
        events = %notify.event_set().iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        "rafty-notify starting"
    );
    let options = ConsumerOptions {
        broker,
        app_id: "rafty-notify".to_owned(),
        host: settings.loaded.host(),
        queue: notify.queue.clone(),
        noun: "event",
        topology: Topology::from_config(&settings.loaded.config.transcode),
        confirm_timeout: settings.loaded.config.broker.confirm_timeout,
        max_deliveries: None,
        reconnect_max: RECONNECT_MAX,
        hold: Arc::new(tokio::sync::watch::channel(false).0),
    };
    let notifier = Notifier {
        events: notify.event_set(),
        agent: target::http_agent(notify.timeout),
        targets,
        settings,
        shutdown: shutdown.clone(),
        progress: Mutex::default(),
        stats: Mutex::default(),
    };
    if let Err(e) = rafty_queue::run(&options, &notifier, &shutdown).await {
        warn!(error = %e, "the consumer loop stopped");
    }
    let stats = notifier.stats();
    info!(?stats, "rafty-notify stopped");
    stats
}

/// Declare the notifier's quorum queue and bind it to every event it knows ([`EventKind::ALL`]).
async fn declare_queue(channel: &Channel, queue: &str) -> Result<(), rafty_queue::Error> {
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

impl Notifier {
    fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            update(&mut s);
        }
    }

    /// Whether target `i` already took the delivery `key`; `take` records that it did.
    fn had(&self, key: &DeliveryKey, i: usize, take: bool) -> bool {
        let Ok(mut progress) = self.progress.lock() else {
            return false;
        };
        let done = progress.done(key);
        if take {
            done.insert(i);
        }
        done.contains(&i)
    }

    fn all_had(&self, key: &DeliveryKey) -> bool {
        (0..self.targets.len()).all(|i| self.had(key, i, false))
    }
}

impl Processor for Notifier {
    async fn connected(
        &self,
        conn: &std::sync::Arc<Connection>,
        _: &Ensured,
    ) -> Result<SessionTasks, rafty_queue::Error> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|source| rafty_queue::Error::Amqp {
                what: "opening a channel",
                source,
            })?;
        declare_queue(&channel, &self.settings.notify.queue).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(SessionTasks::new())
    }

    fn span(&self, incoming: &Incoming) -> Span {
        let key = incoming.delivery().routing_key.as_str();
        let job_id = wire::Event::decode(key, incoming.data())
            .ok()
            .and_then(|e| e.job_id())
            .unwrap_or_else(|| "-".to_owned());
        info_span!(
            "event",
            routing_key = %key,
            message_id = incoming.message_id.as_deref().unwrap_or("-"),
            job_id = %job_id,
            redelivered = incoming.redelivered,
        )
    }

    fn settled(&self, incoming: &Incoming, settled: &Settled) {
        if *settled == Settled::Consumed
            && let Ok(mut p) = self.progress.lock()
        {
            p.forget(&(
                incoming.delivery().routing_key.as_str().to_owned(),
                incoming.data().to_vec(),
            ));
        }
    }

    async fn process(&self, incoming: &Incoming, _events: &Publisher) -> Outcome {
        let routing_key = incoming.delivery().routing_key.as_str().to_owned();
        let event = match EventKind::from_routing_key(&routing_key) {
            None => {
                warn!("not an event the notifier knows: acked without a notification");
                None
            }
            Some(kind) if !self.events.contains(&kind) => {
                debug!(event = %kind, "not in [notify] events: acked without a notification");
                None
            }
            Some(kind) => {
                let event = Event::new(kind, &routing_key, incoming.data());
                if event.is_none() {
                    warn!(
                        bytes = incoming.data().len(),
                        "the body is not a JSON object: acked without a notification"
                    );
                }
                event
            }
        };
        // A piece or the tracks pass of a split title is not the title: only its join is announced.
        let event = event.filter(|e| match &e.wire {
            Ok(rafty_core::wire::Event::Done(done)) => {
                let step = done.split.as_ref().map(|s| s.step.as_str());
                if step.is_some_and(|s| s != "join") {
                    debug!("a step of a split title: acked without a notification");
                    return false;
                }
                true
            }
            _ => true,
        });
        let Some(event) = event else {
            self.count(|s| s.ignored += 1);
            return Outcome::Consumed;
        };
        if let Err(why) = &event.wire {
            warn!(error = %why, "the body is not the event its routing key says (docs/protocol.md); notifying with the fields it has");
        }
        let key = (routing_key, incoming.data().to_vec());
        let stop = || {
            warn!(
                "stopping before every target had the event; it stays in the queue and is sent again to those that did not"
            );
            Outcome::Release
        };
        loop {
            for (i, target) in self.targets.iter().enumerate() {
                if self.had(&key, i, false) {
                    continue;
                }
                let attempt = target.deliver(&event, &self.agent, self.settings.notify.timeout);
                // Only a stop cuts a request short: a delivery the broker takes back meanwhile still
                // lets the request in flight finish and be remembered for the redelivery.
                let result = tokio::select! {
                    r = attempt => r,
                    _ = self.shutdown.abort.cancelled() => {
                        warn!(to = %target, "stopped in the middle of a notification; the event stays in the queue");
                        return Outcome::Release;
                    }
                };
                match result {
                    Ok(()) => {
                        info!(to = %target, "notified");
                        self.had(&key, i, true);
                    }
                    Err(e) => {
                        self.count(|s| s.failed_attempts += 1);
                        warn!(
                            to = %target,
                            error = %e,
                            retry_in_secs = self.settings.notify.retry_delay.as_secs_f64(),
                            "notification failed; it will be tried again"
                        );
                    }
                }
            }
            if self.all_had(&key) {
                // Forgotten only once the ack went through (`settled`): an ack lost with the
                // channel brings the event back, and its targets are not sent it again.
                self.count(|s| s.delivered += 1);
                return Outcome::Consumed;
            }
            if self.shutdown.drain.is_cancelled() {
                return stop();
            }
            // A delivery held for a retry is watched by the loop: when the broker takes it back
            // (consumer_timeout, a broken link) `cancel` fires, and the targets that had it are
            // remembered for the redelivery.
            tokio::select! {
                _ = tokio::time::sleep(self.settings.notify.retry_delay) => {}
                _ = self.shutdown.drain.cancelled() => return stop(),
                // Taken back by the broker: the loop says so; the redelivery comes here again.
                _ = incoming.cancel.cancelled() => return Outcome::Release,
            }
        }
    }
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
