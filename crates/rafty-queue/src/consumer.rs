//! The one consumer loop: connect, declare, prefetch 1, hand each delivery to a [`Processor`] while
//! watching for the broker taking it back, settle what it returns, reconnect with capped backoff, and
//! drain or abort on [`Shutdown`]. `transcoded` and `rafty-notify` run it; what only one of them needs
//! (a worker's heartbeat and control responder, a notifier's own queue) comes in through
//! [`Processor::connected`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rafty_core::names::{HEADER_ATTEMPT, HEADER_ORIGINAL_ROUTING_KEY};
use rafty_core::{Job, JobError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::publisher::{header_int, header_str};
use crate::settle::{Outcome, Settled, settle};
use crate::watchdog::{stop_consuming, taken_back};
use crate::{Broker, Ensured, Error, Publisher, Topology, ensure};

/// Stop requests, mapped from signals by the program prelude: `drain` stops taking deliveries and
/// lets the one in hand finish; `abort` stops that one too (it goes back to the queue). The same shape
/// for every daemon.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Take nothing new; finish what is in hand.
    pub drain: CancellationToken,
    /// Stop what is in hand now.
    pub abort: CancellationToken,
}

impl Shutdown {
    /// A shutdown that nothing has requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the loop should take nothing new: a drain, or an abort (which implies one).
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled() || self.abort.is_cancelled()
    }

    /// Completes when [`Shutdown::is_draining`] becomes true.
    pub async fn draining(&self) {
        tokio::select! {
            _ = self.drain.cancelled() => {}
            _ = self.abort.cancelled() => {}
        }
    }
}

/// How the consumer loop runs.
#[derive(Clone)]
pub struct ConsumerOptions {
    /// The broker's nodes (one, or every node of a cluster): the loop connects through it and fails
    /// over to the next node when a session is lost.
    pub broker: Broker,
    /// `app_id` stamped on what this consumer publishes, and the start of its connection name.
    pub app_id: String,
    /// Host name reported in events and dead letters.
    pub host: String,
    /// The queue to consume.
    pub queue: String,
    /// What a delivery is, in log lines (`job`, `event`).
    pub noun: &'static str,
    /// Retry ladder and delivery limit (declared or checked on every connection).
    pub topology: Topology,
    /// Publisher confirm timeout.
    pub confirm_timeout: Duration,
    /// Stop after this many deliveries are settled.
    pub max_deliveries: Option<u64>,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// While `true`, the loop takes no new delivery (its consumer is cancelled); `false` again resumes.
    pub hold: Arc<watch::Sender<bool>>,
}

/// One delivery.
pub struct Incoming {
    /// How many times the job was tried before (`x-rafty-attempt`).
    pub attempt: u32,
    /// The routing key the message first arrived with (kept across retry rungs).
    pub routing_key: String,
    /// Whether the broker delivered this before (a consumer died or gave it back).
    pub redelivered: bool,
    /// The AMQP `message_id`.
    pub message_id: Option<String>,
    /// Cancelled when the work must stop now: the consumer is told to stop (`Shutdown::abort`), or the
    /// broker took the delivery back (the connection or the channel was lost: a network cut, a
    /// missed heartbeat, `consumer_timeout`), so that finishing would only race the consumer the
    /// broker hands it to next.
    pub cancel: CancellationToken,
    job: OnceLock<Result<Job, JobError>>,
    delivery: Delivery,
}

impl Incoming {
    /// Wrap a delivery; `cancel` is cancelled when its work must stop.
    pub fn new(delivery: Delivery, cancel: CancellationToken) -> Incoming {
        let headers = delivery.properties.headers().as_ref();
        let attempt = header_int(headers, HEADER_ATTEMPT)
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX)) as u32;
        let routing_key = header_str(headers, HEADER_ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
        Incoming {
            attempt,
            routing_key,
            redelivered: delivery.redelivered,
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            cancel,
            job: OnceLock::new(),
            delivery,
        }
    }

    /// The body decoded as a job (on first use), or why it is not one.
    pub fn job(&self) -> &Result<Job, JobError> {
        self.job.get_or_init(|| {
            let kind = self.delivery.properties.kind().as_ref().map(|k| k.as_str());
            Job::decode(kind, &self.delivery.data)
        })
    }

    /// The job id, or the message id when the body is not a job.
    pub fn id(&self) -> String {
        match self.job() {
            Ok(job) => job.id.to_string(),
            Err(_) => self.message_id.clone().unwrap_or_else(|| "-".to_owned()),
        }
    }

    /// The body as it arrived.
    pub fn data(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The delivery itself (properties, exchange, the routing key of this hop).
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}

/// Tasks that live as long as one session with the broker (aborted when it ends).
pub type SessionTasks = Vec<JoinHandle<()>>;

/// The work done for each delivery. The worker plugs HandBrake in here, the notifier its targets,
/// benchmarks and tests something trivial, so the loop they exercise is the product's.
#[allow(async_fn_in_trait)]
pub trait Processor {
    /// After each (re)connection and the topology, before consuming: declare what only this consumer
    /// needs and start what lives as long as the session.
    async fn connected(
        &self,
        conn: &Arc<Connection>,
        ensured: &Ensured,
    ) -> Result<SessionTasks, Error> {
        let _ = (conn, ensured);
        Ok(SessionTasks::new())
    }

    /// The span the delivery's work and settling are logged in.
    fn span(&self, incoming: &Incoming) -> Span {
        info_span!(
            "delivery",
            message_id = incoming.message_id.as_deref().unwrap_or("-"),
            routing_key = %incoming.routing_key,
            redelivered = incoming.redelivered,
        )
    }

    /// Do the work. `events` may be used to announce progress.
    async fn process(&self, incoming: &Incoming, events: &Publisher) -> Outcome;

    /// Told how each delivery was settled (for metrics).
    fn settled(&self, incoming: &Incoming, settled: &Settled) {
        let _ = (incoming, settled);
    }
}

/// What the loop did, for `--max-jobs` and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Deliveries settled in any way.
    pub settled: u64,
    /// Jobs done.
    pub done: u64,
    /// Disc jobs split into title jobs.
    pub split: u64,
    /// Deliveries consumed with nothing to announce.
    pub consumed: u64,
    /// Jobs copied to a retry rung.
    pub retried: u64,
    /// Jobs parked in the dead-letter queue.
    pub dead: u64,
    /// Deliveries handed back to the queue.
    pub requeued: u64,
}

impl Stats {
    fn count(&mut self, settled: &Settled) {
        self.settled += 1;
        match settled {
            Settled::Done { .. } => self.done += 1,
            Settled::Split => self.split += 1,
            Settled::Consumed => self.consumed += 1,
            Settled::Retried(_) => self.retried += 1,
            Settled::Dead => self.dead += 1,
            Settled::Requeued => self.requeued += 1,
        }
    }
}

/// Consume `opts.queue` until `shutdown.drain` or `max_deliveries`; reconnect with capped backoff when
/// the connection drops. Returns what was done.
pub async fn run<P: Processor>(
    opts: &ConsumerOptions,
    processor: &P,
    shutdown: &Shutdown,
) -> Result<Stats, Error> {
    let mut stats = Stats::default();
    let mut backoff = Duration::from_millis(500);
    // How the first session made sure of the topology: later sessions (reconnections) do not
    // declare it again. It is durable, and on a cluster with a frozen node a declaration waits.
    let mut ensured: Option<Ensured> = None;
    loop {
        if shutdown.is_draining() {
            return Ok(stats);
        }
        let mut consuming = false;
        let began = std::time::Instant::now();
        match session(
            opts,
            processor,
            shutdown,
            &mut stats,
            &mut consuming,
            &mut ensured,
        )
        .await
        {
            Ok(()) => return Ok(stats),
            Err(e) => {
                // A queue gone (a broker that lost its definitions): declare again next time.
                if e.to_string().contains("NOT_FOUND") {
                    ensured = None;
                }
                // Reset only after a session that worked, so a broker that refuses us is not hammered.
                if consuming {
                    backoff = Duration::from_millis(500);
                    // The node is gone or cut off: start the next pass at another node, at once (a
                    // pause only after a whole pass failed). A session that ended at once is not a
                    // node lost but something refused: that waits like any failure.
                    opts.broker.lost();
                    if began.elapsed() >= Duration::from_secs(1) {
                        warn!(error = %e, "broker connection lost; reconnecting now");
                        continue;
                    }
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.draining() => return Ok(stats),
        }
        backoff = (backoff * 2).min(opts.reconnect_max);
    }
}

/// Aborts a session's tasks when the session ends.
struct Tasks(SessionTasks);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What a session needs, once set up.
struct Opened {
    conn: Arc<Connection>,
    publisher: Publisher,
    channel: lapin::Channel,
    consumer: Option<lapin::Consumer>,
    _tasks: Tasks,
}

/// Connect (to the first node that works), declare, and start consuming unless `held`; the whole
/// set-up is bounded per node ([`Broker::open`]), so a node whose queues stall sends the loop on to
/// the next one.
async fn open<P: Processor>(
    opts: &ConsumerOptions,
    processor: &P,
    tag: &str,
    held: bool,
    known: &mut Option<Ensured>,
) -> Result<Opened, Error> {
    let earlier = &known.clone();
    let name = format!("{}@{}", opts.app_id, opts.host);
    let (conn, (publisher, channel, consumer, tasks, ensured)) = opts
        .broker
        .open(&name, |conn| async move {
            let publisher = slow(
                "opening the publisher",
                Publisher::open(&conn, &opts.app_id, opts.confirm_timeout),
            )
            .await?;
            let ensured = match &earlier {
                Some(e) => e.clone(),
                None => slow("the topology", ensure(&conn, &opts.topology)).await?,
            };
            let tasks = Tasks(
                slow(
                    "the session's own set-up",
                    processor.connected(&conn, &ensured),
                )
                .await?,
            );
            let channel = slow("the consume channel", conn.create_channel())
                .await
                .map_err(|source| Error::Amqp {
                    what: "opening the consume channel",
                    source,
                })?;
            // Quorum queues refuse global QoS: one unacked delivery per consumer.
            slow(
                "prefetch",
                channel.basic_qos(1, BasicQosOptions { global: false }),
            )
            .await
            .map_err(|source| Error::Amqp {
                what: "setting prefetch",
                source,
            })?;
            let consumer = if held {
                None
            } else {
                Some(slow("consuming", consume(&channel, &opts.queue, tag)).await?)
            };
            Ok((publisher, channel, consumer, tasks, ensured))
        })
        .await?;
    if !matches!(ensured, Ensured::Stalled { .. }) {
        *known = Some(ensured);
    }
    Ok(Opened {
        conn,
        publisher,
        channel,
        consumer,
        _tasks: tasks,
    })
}

/// Run a set-up step, and say in the log when it takes long (a node that does not answer).
async fn slow<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    let began = std::time::Instant::now();
    tokio::pin!(step);
    let out = tokio::select! {
        out = &mut step => out,
        _ = tokio::time::sleep(Duration::from_secs(1)) => {
            warn!(step = what, "a session set-up step is slow (a node that does not answer?)");
            step.await
        }
    };
    if began.elapsed() > Duration::from_secs(1) {
        warn!(
            step = what,
            took_ms = began.elapsed().as_millis() as u64,
            "slow session set-up step done"
        );
    }
    out
}

async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, Error> {
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Amqp {
            what: "consuming the queue",
            source,
        })
}

async fn session<P: Processor>(
    opts: &ConsumerOptions,
    processor: &P,
    shutdown: &Shutdown,
    stats: &mut Stats,
    consuming: &mut bool,
    ensured: &mut Option<Ensured>,
) -> Result<(), Error> {
    let tag = format!("{}@{}-{}", opts.app_id, opts.host, std::process::id());
    let mut hold = opts.hold.subscribe();
    let held = *hold.borrow_and_update();
    // A broker that does not answer must not delay a stop.
    let Opened {
        conn,
        publisher,
        channel,
        mut consumer,
        _tasks,
    } = tokio::select! {
        r = open(opts, processor, &tag, held, ensured) => r?,
        _ = shutdown.draining() => return Ok(()),
    };
    let consume = || consume(&channel, &opts.queue, &tag);
    *consuming = true;
    let noun = opts.noun;
    info!(url = %opts.broker.current(), queue = %opts.queue, "connected; waiting for {noun}s");

    loop {
        if *hold.borrow_and_update() {
            if let Some(c) = consumer.take() {
                stop_consuming(&channel, &tag, c).await;
                info!("drained by request: no new {noun}s until `raftyctl resume`");
            }
            tokio::select! {
                biased;
                _ = shutdown.draining() => {
                    close(&conn).await;
                    return Ok(());
                }
                _ = hold.changed() => continue,
                // Held, nothing else wakes this loop: notice a lost connection, or the consumer
                // would stay disconnected (and deaf to `resume`) until restarted.
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if !conn.status().connected() {
                        return Err(Error::ConsumerEnded(format!("{} (connection lost while drained)", opts.queue)));
                    }
                    continue;
                }
            }
        }
        let active = match consumer.as_mut() {
            Some(c) => c,
            None => {
                info!("resumed: taking {noun}s again");
                consumer.insert(consume().await?)
            }
        };
        let delivery = tokio::select! {
            biased;
            _ = shutdown.draining() => {
                info!("stopping: no new {noun}s will be taken");
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                close(&conn).await;
                return Ok(());
            }
            _ = hold.changed() => continue,
            next = active.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(source)) => return Err(Error::Amqp { what: "receiving a delivery", source }),
                None => return Err(Error::ConsumerEnded(opts.queue.clone())),
            },
        };
        let incoming = Incoming::new(delivery, shutdown.abort.child_token());
        let span = processor.span(&incoming);
        let process = processor.process(&incoming, &publisher);
        tokio::pin!(process);
        let taken = async {
            tokio::select! {
                outcome = &mut process => Ok(outcome),
                why = taken_back(&conn, &channel, active) => {
                    warn!(reason = %why, "the broker took this {noun} back; stopping it (another consumer gets it)");
                    incoming.cancel.cancel();
                    let _ = (&mut process).await;
                    Err(why)
                }
            }
        }
        .instrument(span.clone())
        .await;
        let outcome =
            taken.map_err(|why| Error::ConsumerEnded(format!("{} ({why})", opts.queue)))?;
        async {
            // Cancel before settling the last delivery: with prefetch 1 the broker then sends nothing
            // more, so nothing is delivered here only to be handed back when the channel closes.
            let last = opts
                .max_deliveries
                .is_some_and(|max| stats.settled + 1 >= max);
            let held = *opts.hold.borrow();
            if last || shutdown.is_draining() || held {
                let _ = channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                if held {
                    consumer = None;
                    info!("drained by request: no new {noun}s until `raftyctl resume`");
                }
            }
            let settled =
                settle(outcome, &incoming, &publisher, &opts.topology, &opts.host).await?;
            stats.count(&settled);
            processor.settled(&incoming, &settled);
            info!(?settled, "{noun} settled");
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await?;
        if opts.max_deliveries.is_some_and(|max| stats.settled >= max) {
            info!(
                settled = stats.settled,
                "reached the most deliveries asked for; stopping"
            );
            close(&conn).await;
            return Ok(());
        }
    }
}

async fn close(conn: &Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "stopping".into())).await;
}
