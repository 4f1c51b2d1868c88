//! The worker loop: consume the work queue one job at a time and settle every delivery.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use rafty_core::names::{
    DEAD_EXCHANGE, HEADER_ATTEMPT, HEADER_ERROR, HEADER_ERROR_CLASS, HEADER_FAILED_AT, HEADER_HOST,
    HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY, WORK_QUEUE,
};
use rafty_core::{Class, Failure, Job, JobError, classify};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::publisher::{header_int, header_str, set_header};
use crate::topology::check_retry_rungs;
use crate::{Ensured, Error, Publisher, Topology, connect, ensure, mask_url};

/// Shutdown requests, mapped from signals by the binary: `drain` stops taking jobs and lets the current
/// one finish; `abort` stops the current one too (its delivery goes back to the queue).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop taking new jobs; finish the current one.
    pub drain: CancellationToken,
    /// Stop the current job now.
    pub abort: CancellationToken,
}

impl Shutdown {
    /// A shutdown that nothing has requested yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// How the worker loop runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Broker URL.
    pub url: String,
    /// `app_id` stamped on what this worker publishes.
    pub app_id: String,
    /// Host name reported in events and dead letters.
    pub host: String,
    /// Retry ladder and delivery limit.
    pub topology: Topology,
    /// Publisher confirm timeout.
    pub confirm_timeout: Duration,
    /// Exit after this many deliveries are settled.
    pub max_jobs: Option<u64>,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// How the worker answers control requests (`raftyctl status`, `drain`, `resume`); none: it does
    /// not answer. Its answer to `{"request": "status"}` is also the periodic heartbeat event.
    pub control: Option<crate::control::ControlFn>,
    /// How often the worker publishes `rafty.transcode.worker.heartbeat` (with a control handler).
    pub heartbeat: Duration,
    /// While `true`, the worker takes no new job (`raftyctl drain HOST`); `false` again resumes.
    pub pause: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

/// One delivery from the work queue.
pub struct Incoming {
    /// The decoded job, or why it is not one.
    pub job: Result<Job, JobError>,
    /// How many times the job was tried before (`x-rafty-attempt`).
    pub attempt: u32,
    /// The routing key the job was first published with.
    pub routing_key: String,
    /// Whether the broker delivered this before (a worker died or gave it back).
    pub redelivered: bool,
    /// The AMQP `message_id`.
    pub message_id: Option<String>,
    /// Cancelled when the job must stop now: the worker is told to stop (`Shutdown::abort`), or the
    /// broker took the delivery back (the connection or the channel was lost: a network cut, a
    /// missed heartbeat, `consumer_timeout`), so that finishing would only race the worker the
    /// broker hands it to next.
    pub cancel: CancellationToken,
    delivery: Delivery,
}

impl Incoming {
    /// The job id, or the message id when the body is not a job.
    pub fn id(&self) -> String {
        match &self.job {
            Ok(job) => job.id.to_string(),
            Err(_) => self.message_id.clone().unwrap_or_else(|| "-".to_owned()),
        }
    }

    fn from_delivery(delivery: Delivery, cancel: CancellationToken) -> Incoming {
        let headers = delivery.properties.headers().as_ref();
        let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
        let job = Job::decode(kind, &delivery.data);
        let attempt = header_int(headers, HEADER_ATTEMPT)
            .unwrap_or(0)
            .clamp(0, i64::from(u32::MAX)) as u32;
        let routing_key = header_str(headers, HEADER_ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
        Incoming {
            job,
            attempt,
            routing_key,
            redelivered: delivery.redelivered,
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            cancel,
            delivery,
        }
    }
}

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    /// The job's outputs are in place; `event` is the body of the `done` event.
    Done(serde_json::Value),
    /// The job was split into title jobs, each published and confirmed; `event` is the body of the
    /// `split` event.
    Split(serde_json::Value),
    /// The job failed; [`classify`] decides what happens next.
    Failed(Failure),
}

/// The work done for each delivery. The worker binary plugs HandBrake in here; benchmarks plug in
/// something trivial, so the loop they measure is the product's.
#[allow(async_fn_in_trait)]
pub trait Processor {
    /// Do the job. `events` may be used to announce progress.
    async fn process(&self, incoming: &Incoming, events: &Publisher) -> Outcome;
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
    /// Jobs copied to a retry rung.
    pub retried: u64,
    /// Jobs parked in the dead-letter queue.
    pub dead: u64,
    /// Deliveries handed back to the queue.
    pub requeued: u64,
}

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acked after the `done` event was confirmed.
    Done,
    /// Acked after its title jobs and the `split` event were confirmed.
    Split,
    /// Copied to this retry queue (confirmed), then acked.
    Retried(String),
    /// Copied to the dead-letter exchange (confirmed), then acked.
    Dead,
    /// Nacked with requeue.
    Requeued,
}

/// Map an outcome to what the broker must do, and do it. Every copy (retry rung, dead letter, `done`
/// event) is confirmed before the original delivery is acked, so a crash in between duplicates a job
/// but never loses one.
pub async fn settle(
    outcome: Outcome,
    incoming: &Incoming,
    publisher: &Publisher,
    topology: &Topology,
    host: &str,
) -> Result<Settled, Error> {
    let settled = match outcome {
        Outcome::Done(event) => {
            publisher.publish_event("done", &event).await?;
            ack(incoming).await?;
            Settled::Done
        }
        Outcome::Split(event) => {
            publisher.publish_event("split", &event).await?;
            ack(incoming).await?;
            Settled::Split
        }
        Outcome::Failed(failure) => {
            let class = classify(&failure);
            let settled = match class {
                Class::Requeue => {
                    let ok = incoming
                        .delivery
                        .acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await
                        .map_err(|source| Error::Amqp {
                            what: "handing the job back (nack)",
                            source,
                        })?;
                    if !ok {
                        return Err(lost());
                    }
                    Settled::Requeued
                }
                Class::Retryable if topology.retry_queue_for(incoming.attempt).is_some() => {
                    let queue = topology.retry_queue_for(incoming.attempt).expect("checked");
                    let props = copy_properties(incoming, incoming.attempt + 1, &[]);
                    publisher
                        .publish("", &queue, &incoming.delivery.data, props, true)
                        .await?;
                    ack(incoming).await?;
                    Settled::Retried(queue)
                }
                Class::Retryable | Class::Permanent => {
                    let reason = if class == Class::Retryable {
                        format!(
                            "{failure} (gave up after {} attempts; the retry ladder has {} rungs)",
                            incoming.attempt + 1,
                            topology.retry_delays.len()
                        )
                    } else {
                        failure.to_string()
                    };
                    let now = OffsetDateTime::now_utc().format(&Rfc3339).expect("formats");
                    let props = copy_properties(
                        incoming,
                        incoming.attempt,
                        &[
                            (HEADER_ERROR_CLASS, class.as_str()),
                            (HEADER_ERROR, &bounded(&reason, MAX_REASON_BYTES)),
                            (HEADER_HOST, host),
                            (HEADER_FAILED_AT, &now),
                        ],
                    );
                    publisher
                        .publish(DEAD_EXCHANGE, "", &incoming.delivery.data, props, true)
                        .await?;
                    ack(incoming).await?;
                    Settled::Dead
                }
            };
            let event = json!({
                "id": incoming.id(),
                "name": incoming.job.as_ref().ok().map(|j| j.output.name.clone()),
                "host": host,
                "attempt": incoming.attempt,
                "error-kind": failure.kind(),
                "error-class": class.as_str(),
                "error": failure.to_string(),
                "next": match &settled {
                    Settled::Retried(q) => q.as_str(),
                    Settled::Dead => "dead-letter",
                    _ => "requeued",
                },
            });
            if let Err(e) = publisher.publish_event("failed", &event).await {
                warn!(error = %e, "could not announce the failure; the job itself is settled");
            }
            settled
        }
    };
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
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            what: "acknowledging the job",
            source,
        })?;
    if ok { Ok(()) } else { Err(lost()) }
}

/// The delivery's properties with the attempt set, the original routing key kept and extra headers.
fn copy_properties(incoming: &Incoming, attempt: u32, extra: &[(&str, &str)]) -> BasicProperties {
    let props = &incoming.delivery.properties;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    if header_str(Some(&headers), HEADER_ORIGINAL_ROUTING_KEY).is_none() {
        set_header(
            &mut headers,
            HEADER_ORIGINAL_ROUTING_KEY,
            incoming.delivery.routing_key.as_str(),
        );
        set_header(
            &mut headers,
            HEADER_ORIGINAL_EXCHANGE,
            incoming.delivery.exchange.as_str(),
        );
    }
    for (k, v) in extra {
        set_header(&mut headers, k, v);
    }
    // The broker's own death records describe earlier hops; a copy starts a new history.
    let mut clean = FieldTable::default();
    for (k, v) in headers.inner() {
        if !k.as_str().starts_with("x-death")
            && !k.as_str().starts_with("x-first-death")
            && !k.as_str().starts_with("x-last-death")
        {
            clean.insert(k.clone(), v.clone());
        }
    }
    // A content header cannot be split across frames (RabbitMQ's frame_max is 128 KiB): a copy whose
    // headers do not fit would close the connection and loop. Drop the producer's largest headers
    // (never Rafty's) until it fits, and say so.
    if table_bytes(&clean) > MAX_HEADER_BYTES {
        let mut foreign: Vec<(String, usize)> = clean
            .inner()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-rafty-"))
            .map(|(k, v)| (k.as_str().to_owned(), value_bytes(v)))
            .collect();
        foreign.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
        let mut total = table_bytes(&clean);
        let mut dropped = Vec::new();
        for (k, size) in foreign {
            if total <= MAX_HEADER_BYTES {
                break;
            }
            total -= size + 1 + k.len();
            dropped.push(k);
        }
        let mut kept = FieldTable::default();
        for (k, v) in clean.inner() {
            if !dropped.iter().any(|d| d == k.as_str()) {
                kept.insert(k.clone(), v.clone());
            }
        }
        set_header(
            &mut kept,
            "x-rafty-headers-dropped",
            &bounded(&dropped.join(", "), 1024),
        );
        clean = kept;
    }
    props.clone().with_delivery_mode(2).with_headers(clean)
}

/// Longest reason kept in `x-rafty-error`; the `failed` event and the log carry it whole.
const MAX_REASON_BYTES: usize = 4096;
/// Most header bytes a copy may carry, well inside the smallest frame_max brokers negotiate (128 KiB).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// `text` cut to about `max` bytes at character boundaries, keeping its beginning and its end (where
/// a reason that quotes a long value says what is wrong with it).
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut head = max / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - max / 4;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} […{} bytes cut…] {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// About how many bytes a header table takes on the wire (an upper bound for the common types).
fn table_bytes(table: &FieldTable) -> usize {
    table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + value_bytes(v))
        .sum()
}

fn value_bytes(v: &AMQPValue) -> usize {
    match v {
        AMQPValue::LongString(s) => 5 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 2 + s.as_str().len(),
        AMQPValue::FieldTable(t) => 5 + table_bytes(t),
        AMQPValue::FieldArray(a) => 5 + a.as_slice().iter().map(value_bytes).sum::<usize>(),
        AMQPValue::ByteArray(b) => 5 + b.as_slice().len(),
        _ => 9,
    }
}

enum SessionEnd {
    /// Drained or reached `--max-jobs`.
    Finished,
}

/// Consume the work queue until `shutdown.drain` or `--max-jobs`; reconnect with capped backoff when the
/// connection drops. Returns what was done.
pub async fn run_worker<P: Processor>(
    opts: &WorkerOptions,
    processor: &P,
    shutdown: &Shutdown,
) -> Result<Stats, Error> {
    let mut stats = Stats::default();
    let mut backoff = Duration::from_millis(500);
    loop {
        if shutdown.drain.is_cancelled() {
            return Ok(stats);
        }
        let mut consuming = false;
        match session(opts, processor, shutdown, &mut stats, &mut consuming).await {
            Ok(SessionEnd::Finished) => return Ok(stats),
            Err(e) => {
                if consuming {
                    backoff = Duration::from_millis(500);
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.drain.cancelled() => return Ok(stats),
        }
        backoff = (backoff * 2).min(opts.reconnect_max);
    }
}

async fn session<P: Processor>(
    opts: &WorkerOptions,
    processor: &P,
    shutdown: &Shutdown,
    stats: &mut Stats,
    consuming: &mut bool,
) -> Result<SessionEnd, Error> {
    let conn = connect(&opts.url, &format!("{}@{}", opts.app_id, opts.host)).await?;
    let publisher = Publisher::open(&conn, &opts.app_id, opts.confirm_timeout).await?;
    if let Ensured::Checked { .. } = ensure(&conn, &opts.topology).await? {
        check_retry_rungs(&conn, &opts.topology).await?;
    }
    let channel = conn.create_channel().await.map_err(|source| Error::Amqp {
        what: "opening the consume channel",
        source,
    })?;
    // Quorum queues refuse global QoS: one unacked job per consumer.
    channel
        .basic_qos(1, BasicQosOptions { global: false })
        .await
        .map_err(|source| Error::Amqp {
            what: "setting prefetch",
            source,
        })?;
    let tag = format!("{}@{}-{}", opts.app_id, opts.host, std::process::id());
    let consume = || async {
        channel
            .basic_consume(
                WORK_QUEUE.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Amqp {
                what: "consuming the work queue",
                source,
            })
    };
    let mut paused = opts.pause.subscribe();
    let mut consumer = if *paused.borrow_and_update() {
        None
    } else {
        Some(consume().await?)
    };
    *consuming = true;
    let mut _control = None;
    let mut _heartbeat = None;
    if let Some(handler) = &opts.control {
        _control = Some(AbortOnDrop(
            crate::control::serve(&conn, handler.clone()).await?,
        ));
        // Its own channel: a broker return is matched to whichever confirm completes next on a
        // channel, and must never be taken by a heartbeat instead of a job's copy.
        let beats = Publisher::open(&conn, &opts.app_id, opts.confirm_timeout).await?;
        _heartbeat = Some(AbortOnDrop(tokio::spawn(heartbeat(
            beats,
            handler.clone(),
            opts.heartbeat,
        ))));
    }
    info!(url = %mask_url(&opts.url), queue = WORK_QUEUE, "connected; waiting for jobs");

    loop {
        if *paused.borrow_and_update() {
            if let Some(c) = consumer.take() {
                stop_consuming(&channel, &tag, c).await;
                info!("drained by request: no new jobs until `raftyctl resume`");
            }
            tokio::select! {
                biased;
                _ = shutdown.drain.cancelled() => {
                    close(&conn).await;
                    return Ok(SessionEnd::Finished);
                }
                _ = paused.changed() => continue,
                // Drained, nothing else wakes this loop: notice a lost connection, or the worker
                // would stay disconnected (and deaf to `resume`) until restarted.
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if !conn.status().connected() {
                        return Err(Error::ConsumerEnded(format!("{WORK_QUEUE} (connection lost while drained)")));
                    }
                    continue;
                }
            }
        }
        let active = match consumer.as_mut() {
            Some(c) => c,
            None => {
                info!("resumed: taking jobs again");
                consumer.insert(consume().await?)
            }
        };
        let delivery = tokio::select! {
            biased;
            _ = shutdown.drain.cancelled() => {
                info!("stopping: no new jobs will be taken");
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                close(&conn).await;
                return Ok(SessionEnd::Finished);
            }
            _ = paused.changed() => continue,
            next = active.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(source)) => return Err(Error::Amqp { what: "receiving a job", source }),
                None => return Err(Error::ConsumerEnded(WORK_QUEUE.to_owned())),
            },
        };
        let incoming = Incoming::from_delivery(delivery, shutdown.abort.child_token());
        let span = info_span!(
            "job",
            job_id = %incoming.id(),
            attempt = incoming.attempt,
            routing_key = %incoming.routing_key,
            redelivered = incoming.redelivered,
        );
        let process = processor.process(&incoming, &publisher);
        tokio::pin!(process);
        let taken = async {
            tokio::select! {
                outcome = &mut process => Ok(outcome),
                why = taken_back(&conn, &channel, active) => {
                    warn!(
                        reason = %why,
                        "the broker took this job back; stopping it (another worker gets it)"
                    );
                    incoming.cancel.cancel();
                    let _ = (&mut process).await;
                    Err(why)
                }
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = match taken {
            Ok(outcome) => outcome,
            Err(why) => return Err(Error::ConsumerEnded(format!("{WORK_QUEUE} ({why})"))),
        };
        async {
            // Cancel before settling the last delivery: with prefetch 1 the broker then sends nothing
            // more, so no other job is delivered here only to be handed back when the channel closes.
            let last = opts.max_jobs.is_some_and(|max| stats.settled + 1 >= max);
            if last || shutdown.drain.is_cancelled() || *opts.pause.borrow() {
                let _ = channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                if *opts.pause.borrow() {
                    consumer = None;
                    info!("drained by request: no new jobs until `raftyctl resume`");
                }
            }
            let settled =
                settle(outcome, &incoming, &publisher, &opts.topology, &opts.host).await?;
            stats.settled += 1;
            match &settled {
                Settled::Done => stats.done += 1,
                Settled::Split => stats.split += 1,
                Settled::Retried(_) => stats.retried += 1,
                Settled::Dead => stats.dead += 1,
                Settled::Requeued => stats.requeued += 1,
            }
            info!(?settled, "job settled");
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await?;
        if opts.max_jobs.is_some_and(|max| stats.settled >= max) {
            info!(settled = stats.settled, "reached --max-jobs; stopping");
            close(&conn).await;
            return Ok(SessionEnd::Finished);
        }
    }
}

/// Completes, saying why, when the delivery being worked on can no longer be acked here because the
/// broker has taken it back: lapin noticed a dead peer by missed heartbeats, the connection or channel
/// closed, or the broker closed the channel of a delivery held past `consumer_timeout`.
async fn taken_back(
    conn: &Connection,
    channel: &lapin::Channel,
    consumer: &mut lapin::Consumer,
) -> String {
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    // Prefetch 1 forbids a second delivery; hand it back rather than hold it.
                    let _ = delivery
                        .acker
                        .nack(BasicNackOptions { multiple: false, requeue: true })
                        .await;
                }
                Some(Err(e)) => return taken_back_reason(&e.to_string()),
                None => return "the broker cancelled this worker's consumer".to_owned(),
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if !conn.status().connected() || !channel.status().connected() {
                    return "the connection to the broker was lost (network, missed heartbeats or a broker restart)".to_owned();
                }
            }
        }
    }
}

/// The broker's reason, with what to do when it is the consumer timeout.
fn taken_back_reason(error: &str) -> String {
    if error.contains("delivery acknowledgement") && error.contains("timed out") {
        format!(
            "{error}: the job ran longer than the broker's consumer_timeout; raise consumer_timeout in the \
             broker's rabbitmq.conf above the longest encode (see config/rabbitmq.conf)"
        )
    } else {
        error.to_owned()
    }
}

/// Cancel the consumer and hand back anything the broker sent before the cancel arrived.
async fn stop_consuming(channel: &lapin::Channel, tag: &str, mut consumer: lapin::Consumer) {
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await;
    }
}

/// Publish the worker's status as `rafty.transcode.worker.heartbeat` every `every`.
async fn heartbeat(publisher: Publisher, handler: crate::control::ControlFn, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(status) = handler(&serde_json::json!({"request": "status"}))
            && let Err(e) = publisher.publish_event("worker.heartbeat", &status).await
        {
            tracing::debug!(error = %e, "heartbeat not published");
        }
    }
}

/// Stops the control responder with its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn close(conn: &Connection) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        conn.close(200, "worker stopping".into()),
    )
    .await;
}
