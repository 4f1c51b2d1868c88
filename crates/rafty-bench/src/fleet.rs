//! What the fleet-level groups (`dispatch`, `scaling`, `failures`) share: a bench-only
//! [`Processor`] plugged into the product's own worker loop ([`rafty_queue::run`]), workers on threads of
//! their own (one connection and one single-threaded runtime each, as `transcoded` runs), the
//! baseline (a minimal lapin consume-ack loop), publishing helpers and statistics.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use rafty_core::job::{Origin, Source};
use rafty_core::names::{CONTENT_TYPE_JSON, DEAD_EXCHANGE, HEADER_ATTEMPT, JOB_TYPE};
use rafty_core::wire::{self, Event};
use rafty_core::{Failure, Job, Media};
use rafty_queue::{
    ConsumerOptions, Incoming, Outcome, Processor, Publisher, Shutdown, Stats, Topology, connect,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// `app_id` of what the bench publishes itself.
pub const APP: &str = "rafty-bench";
/// Publisher confirm timeout of every publisher in the bench.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The routing key of a DVD job on `rafty.rip`.
pub const DVD_KEY: &str = "rafty.rip.iso.dvd";

/// The topology of every fleet group: a short retry ladder (1 s, 2 s), delivery limit 10.
pub fn topology() -> Topology {
    Topology {
        retry_delays: vec![Duration::from_secs(1), Duration::from_secs(2)],
        delivery_limit: 10,
    }
}

/// A single-threaded runtime, as `transcoded` and `raftyctl` use.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A job like `raftyctl submit` makes, created now (its `created_at` is the submit time).
pub fn job(name: String) -> Job {
    Job::new(
        Source {
            path: "/var/lib/rafty/iso/Bench Disc.iso".into(),
            media: Media::Dvd,
            size: Some(6_119_424),
            sha256: None,
            label: Some("BENCH_DISC".into()),
            unreadable_sectors: None,
            url: None,
        },
        name,
        Origin {
            host: "rafty-bench".into(),
            device: None,
        },
    )
}

/// The properties the library publisher puts on a job (docs/protocol.md), for raw lapin publishing.
pub fn job_properties(job: &Job) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2)
        .with_message_id(job.id.to_string().as_str().into())
        .with_type(JOB_TYPE.into())
        .with_app_id(APP.into())
        .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64)
        .with_headers(headers)
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The arguments of the work queue (docs/protocol.md) other than its type, for baseline queues that
/// must behave like it.
pub fn work_queue_args() -> Vec<(&'static str, AMQPValue)> {
    vec![
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(topology().delivery_limit)),
        ),
        ("x-dead-letter-exchange", long(DEAD_EXCHANGE)),
        ("x-dead-letter-strategy", long("at-least-once")),
        ("x-overflow", long("reject-publish")),
    ]
}

/// Arguments of a retry rung (TTL, back to `back` through the default exchange), as the product
/// declares them.
pub fn rung_args(ttl: Duration, back: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![
        (
            "x-message-ttl",
            AMQPValue::LongLongInt(ttl.as_millis() as i64),
        ),
        ("x-dead-letter-exchange", long("")),
        ("x-dead-letter-routing-key", long(back)),
        ("x-dead-letter-strategy", long("at-least-once")),
        ("x-overflow", long("reject-publish")),
    ]
}

/// What the bench processor saw of one delivery.
#[derive(Debug, Clone)]
pub struct Record {
    /// Which worker (0-based).
    pub worker: usize,
    /// The job id.
    pub id: String,
    /// `x-rafty-attempt` of the delivery.
    pub attempt: u32,
    /// When `process` was called.
    pub start: Instant,
    /// The same moment on the wall clock, to compare with the job's `created_at`.
    pub start_wall: OffsetDateTime,
    /// The job's `created_at`.
    pub created_at: Option<OffsetDateTime>,
    /// When `process` returned its outcome.
    pub end: Instant,
}

/// A processor whose cost is known: it sleeps `cost` (zero: nothing at all), fails a job whose output
/// name starts with `retry` as `SourceUnavailable` (retryable) on its first `fail_attempts`
/// attempts, fails a job whose name starts with `dead` as `BadMessage` (permanent), finishes every
/// other job, and reports each call on `records`.
pub struct BenchProcessor {
    /// Which worker (0-based).
    pub worker: usize,
    /// The fixed cost of a job.
    pub cost: Duration,
    /// Attempts of a `retry` job that fail.
    pub fail_attempts: u32,
    /// Where each call is reported.
    pub records: mpsc::UnboundedSender<Record>,
}

impl BenchProcessor {
    /// A trivial processor: no cost, no failure.
    pub fn trivial(worker: usize, records: mpsc::UnboundedSender<Record>) -> Self {
        BenchProcessor {
            worker,
            cost: Duration::ZERO,
            fail_attempts: 0,
            records,
        }
    }
}

impl Processor for BenchProcessor {
    async fn process(&self, incoming: &Incoming, _events: &Publisher) -> Outcome {
        let start = Instant::now();
        let start_wall = OffsetDateTime::now_utc();
        if !self.cost.is_zero() {
            tokio::time::sleep(self.cost).await;
        }
        let (job_id, name, created_at) = match incoming.job() {
            Ok(job) => (job.id, job.output.name.as_str(), Some(job.created_at)),
            Err(_) => (uuid::Uuid::nil(), "", None),
        };
        let id = incoming.id();
        let outcome = if name.starts_with("dead") {
            Outcome::Failed(Failure::BadMessage(
                "rafty-bench: a permanent failure on purpose".into(),
            ))
        } else if name.starts_with("retry") && incoming.attempt < self.fail_attempts {
            Outcome::Failed(Failure::SourceUnavailable(
                "rafty-bench: a retryable failure on purpose".into(),
            ))
        } else {
            Outcome::Done(done_event(
                job_id,
                &format!("bench-worker-{}", self.worker),
                name,
                incoming.attempt,
            ))
        };
        let _ = self.records.send(Record {
            worker: self.worker,
            id,
            attempt: incoming.attempt,
            start,
            start_wall,
            created_at,
            end: Instant::now(),
        });
        outcome
    }
}

/// The `done` event of a bench job: as small as a real one with no outputs.
fn done_event(id: uuid::Uuid, host: &str, name: &str, attempt: u32) -> wire::Done {
    wire::Done {
        id,
        host: host.to_owned(),
        name: name.to_owned(),
        disc: None,
        outputs: Vec::new(),
        skipped: false,
        attempt,
        preset: String::new(),
        handbrake: String::new(),
        elapsed_secs: 0.0,
        finished_at: String::new(),
        split: None,
    }
}

/// Wait for a thread without blocking the runtime that waits.
async fn join<T>(thread: JoinHandle<T>) -> T {
    while !thread.is_finished() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    thread.join().expect("a bench thread panicked")
}

/// The product's worker loop on a thread of its own, with its own connection and runtime.
pub struct BenchWorker {
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<Stats, String>>>,
}

/// Start [`rafty_queue::run`] with `processor` on `url` (exits by itself after `max_jobs`); `url`
/// may hold several whitespace-separated node URLs, as `RAFTY_AMQP_URL` may.
pub fn spawn_worker(url: &str, processor: BenchProcessor, max_jobs: Option<u64>) -> BenchWorker {
    let broker = rafty_queue::Broker::new(url.split_whitespace().map(str::to_owned).collect())
        .expect("a valid broker URL");
    spawn_worker_on(broker, processor, max_jobs)
}

/// Start [`rafty_queue::run`] with `processor` through `broker` (a clone kept by the caller shares
/// which node is current, so the caller can tell where the loop is connected).
pub fn spawn_worker_on(
    broker: rafty_queue::Broker,
    processor: BenchProcessor,
    max_jobs: Option<u64>,
) -> BenchWorker {
    let shutdown = Shutdown::new();
    let opts = ConsumerOptions {
        broker,
        app_id: APP.to_owned(),
        host: format!("bench-worker-{}", processor.worker),
        queue: rafty_core::names::WORK_QUEUE.to_owned(),
        noun: "job",
        topology: topology(),
        confirm_timeout: CONFIRM_TIMEOUT,
        max_deliveries: max_jobs,
        reconnect_max: Duration::from_secs(1),
        hold: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
    };
    let stop = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name(format!("bench-worker-{}", processor.worker))
        .spawn(move || {
            runtime()
                .block_on(rafty_queue::run(&opts, &processor, &stop))
                .map_err(|e| e.to_string())
        })
        .expect("start a worker thread");
    BenchWorker {
        shutdown,
        thread: Some(thread),
    }
}

impl BenchWorker {
    /// Wait until the loop ends by itself (`max_jobs`).
    pub async fn finish(mut self) -> anyhow::Result<Stats> {
        let thread = self.thread.take().expect("joined once");
        join(thread).await.map_err(anyhow::Error::msg)
    }

    /// Ask the loop to drain (it finishes the job in hand) and wait for it.
    pub async fn stop(self) -> anyhow::Result<Stats> {
        self.shutdown.drain.cancel();
        self.finish().await
    }
}

impl Drop for BenchWorker {
    fn drop(&mut self) {
        // On an error path: let the thread end by itself.
        self.shutdown.drain.cancel();
    }
}

/// One delivery taken by [`spawn_lapin_loop`].
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the delivery came out of the consumer stream.
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: OffsetDateTime,
    /// The `message_id` property.
    pub message_id: Option<String>,
}

/// The baseline consumer on a thread of its own.
pub struct LapinLoop {
    stop: Shutdown,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Every delivery, in order.
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
}

/// What the lapin loop does with each delivery before its ack.
#[derive(Debug, Clone)]
pub enum Then {
    /// Nothing: consume, ack, next.
    Ack,
    /// Publish a small event to `rafty.transcode` and await its confirm, as the product's loop does
    /// with its `done` event.
    Event,
    /// Publish a copy of the delivery (mandatory) to this exchange and routing key and await its
    /// confirm, as the product's loop does with a retry or a dead letter.
    Forward(String, String),
}

/// The baseline: a minimal lapin consumer (its own connection, thread and single-threaded runtime;
/// prefetch 1; consume, ack, next) on `queue`, ending after `max` deliveries or when stopped; `then`
/// says what it publishes, with a confirm, before each ack.
pub fn spawn_lapin_loop(url: &str, queue: &str, max: Option<usize>, then: Then) -> LapinLoop {
    let (tx, arrivals) = mpsc::unbounded_channel();
    let stop = Shutdown::new();
    let stopped = stop.clone();
    let (url, queue) = (url.to_owned(), queue.to_owned());
    let thread = std::thread::Builder::new()
        .name("bench-lapin-loop".into())
        .spawn(move || {
            runtime().block_on(async move {
                let conn = connect(&url, "rafty-bench lapin loop").await?;
                let ch = conn.create_channel().await?;
                ch.basic_qos(1, BasicQosOptions { global: false }).await?;
                let confirms = conn.create_channel().await?;
                confirms
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let event = Event::Done(done_event(uuid::Uuid::nil(), "bench", "lapin-loop", 0));
                let mut consumer = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "rafty-bench-lapin-loop".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                let mut got = 0;
                while max.is_none_or(|m| got < m) {
                    let next = tokio::select! {
                        biased;
                        _ = stopped.drain.cancelled() => break,
                        next = consumer.next() => next,
                    };
                    let delivery = match next {
                        Some(d) => d?,
                        None => anyhow::bail!("the broker ended the consumer on {queue}"),
                    };
                    let at = Instant::now();
                    let wall = OffsetDateTime::now_utc();
                    let publish = match &then {
                        Then::Ack => None,
                        Then::Event => {
                            let body = event.to_json();
                            let props = BasicProperties::default()
                                .with_content_type(CONTENT_TYPE_JSON.into())
                                .with_delivery_mode(2)
                                .with_type("rafty.event.done.v1".into())
                                .with_app_id(APP.into())
                                .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64);
                            Some((event.exchange(), event.routing_key(), body, props, false))
                        }
                        Then::Forward(exchange, key) => Some((
                            exchange.as_str(),
                            key.as_str(),
                            delivery.data.clone(),
                            delivery.properties.clone(),
                            true,
                        )),
                    };
                    if let Some((exchange, key, body, props, mandatory)) = publish {
                        let confirm = confirms
                            .basic_publish(
                                exchange.into(),
                                key.into(),
                                BasicPublishOptions {
                                    mandatory,
                                    immediate: false,
                                },
                                &body,
                                props,
                            )
                            .await?
                            .await?;
                        check(confirm, exchange, key)?;
                    }
                    let acked = delivery.acker.ack(BasicAckOptions::default()).await?;
                    anyhow::ensure!(acked, "ack on a closed channel");
                    got += 1;
                    let _ = tx.send(Arrival {
                        at,
                        wall,
                        message_id: delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|m| m.as_str().to_owned()),
                    });
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.close(200, "bench done".into()),
                )
                .await;
                Ok(())
            })
        })
        .expect("start the lapin loop thread");
    LapinLoop {
        stop,
        thread: Some(thread),
        arrivals,
    }
}

impl LapinLoop {
    /// Wait until the loop ends by itself (`max`).
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        let thread = self.thread.take().expect("joined once");
        join(thread).await
    }

    /// Stop it and wait.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.drain.cancel();
        self.finish().await
    }
}

impl Drop for LapinLoop {
    fn drop(&mut self) {
        self.stop.drain.cancel();
    }
}

/// Take `n` items from `rx`, or fail naming `what` after `timeout`.
pub async fn collect<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    n: usize,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => out.push(item),
            Ok(None) => anyhow::bail!("{what}: the sender stopped after {} of {n}", out.len()),
            Err(_) => anyhow::bail!("{what}: {} of {n} within {timeout:?}", out.len()),
        }
    }
    Ok(out)
}

/// The bench's own connection, with a channel in confirm mode.
pub struct Client {
    /// The connection (the library publisher opens its channel on it).
    pub conn: Connection,
    /// A channel in confirm mode.
    pub ch: Channel,
}

impl Client {
    /// Connect to `url`.
    pub async fn open(url: &str) -> anyhow::Result<Client> {
        let conn = connect(url, "rafty-bench").await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Client { conn, ch })
    }

    /// Declare a durable quorum queue.
    pub async fn queue(&self, name: &str, args: &[(&str, AMQPValue)]) -> anyhow::Result<()> {
        let mut table = FieldTable::default();
        table.insert("x-queue-type".into(), long("quorum"));
        for (k, v) in args {
            table.insert((*k).into(), v.clone());
        }
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.ch.queue_declare(name.into(), opts, table).await?;
        Ok(())
    }

    /// Declare a durable exchange.
    pub async fn exchange(&self, name: &str, kind: ExchangeKind) -> anyhow::Result<()> {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.ch
            .exchange_declare(name.into(), kind, opts, FieldTable::default())
            .await?;
        Ok(())
    }

    /// Bind `queue` to `exchange` with `key`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Messages ready in `queue` and its consumers (passive declare).
    pub async fn counts(&self, queue: &str) -> anyhow::Result<(u32, u32)> {
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = self
            .ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await?;
        Ok((q.message_count(), q.consumer_count()))
    }

    /// Wait until `queue` has `n` consumers.
    pub async fn wait_consumers(&self, queue: &str, n: u32) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let (_, consumers) = self.counts(queue).await?;
            if consumers == n {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "{queue} has {consumers} consumers, not {n}, after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Delete every ready message of `queue`; how many there were.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self
            .ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?)
    }

    /// Delete `queue`; how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self
            .ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?)
    }

    /// Fail unless `queue` is empty.
    pub async fn ensure_empty(&self, queue: &str) -> anyhow::Result<()> {
        let (ready, _) = self.counts(queue).await?;
        anyhow::ensure!(ready == 0, "{queue} still holds {ready} messages");
        Ok(())
    }

    /// Publish (mandatory) with raw lapin and await its confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> anyhow::Result<()> {
        let confirm = self
            .ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                props,
            )
            .await?
            .await?;
        check(confirm, exchange, key)
    }

    /// Publish jobs (mandatory) with many confirms outstanding at once: a fast way to fill a queue,
    /// not a figure.
    pub async fn fill(&self, exchange: &str, key: &str, jobs: Vec<Job>) -> anyhow::Result<()> {
        for chunk in jobs.chunks(500) {
            let mut pending = Vec::with_capacity(chunk.len());
            for job in chunk {
                pending.push(
                    self.ch
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &job.to_json(),
                            job_properties(job),
                        )
                        .await?,
                );
            }
            for confirm in pending {
                check(confirm.await?, exchange, key)?;
            }
        }
        Ok(())
    }

    /// Close the connection.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.conn.close(200, "bench done".into()),
        )
        .await;
    }
}

fn check(confirm: Confirmation, exchange: &str, key: &str) -> anyhow::Result<()> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => {
            anyhow::bail!("the broker did not take a message to {exchange} [{key}]: {other:?}")
        }
    }
}

/// The `p`-th percentile (nearest rank) of `v`.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Median, minimum and maximum of a set of figures.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    /// The median (the upper one for an even count, as the other groups).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (not empty).
    pub fn of(v: &[f64]) -> Spread {
        let mut v = v.to_vec();
        let median = crate::median(&mut v);
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{Spread, percentile};

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 100.0);
        assert_eq!(percentile(&mut v, 99.0), 198.0);
        assert_eq!(percentile(&mut v, 100.0), 200.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
    }

    #[test]
    fn spread_shows_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
    }
}
