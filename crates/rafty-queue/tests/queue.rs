//! The consumer loop where it lives: the real [`rafty_queue::run`] against a real RabbitMQ (one
//! private node for this binary, a vhost per test so the tests run in parallel), with a fake
//! [`Processor`] in place of HandBrake, so each test takes seconds and asserts what the loop, the
//! verdict and the settling do on the broker: the retry ladder, dead letters and their headers, a
//! requeue on shutdown, a delivery the broker takes back, a redelivered job that was already
//! finished, and `max_deliveries`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rafty_core::job::{Origin, Source};
use rafty_core::names::{
    DEAD_QUEUE, HEADER_ATTEMPT, RIP_EXCHANGE, WORK_QUEUE, retry_queue, rip_routing_key,
};
use rafty_core::wire::{self, Event, NEXT_DEAD_LETTER, NEXT_REQUEUED};
use rafty_core::{Failure, Job, Media};
use rafty_queue::publisher::{header_int, header_str};
use rafty_queue::{
    ConsumerOptions, Incoming, Outcome, Processor, Publisher, Shutdown, Stats, Topology, connect,
    ensure,
};
use rafty_testkit::{Amqp, Broker, EventTap, shared_broker, wait_for};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The longest any single wait here may take; a passing test takes a few seconds.
const WAIT: Duration = Duration::from_secs(30);
/// `app_id` of the loops and the producer here.
const APP: &str = "rafty-queue-test";

// ---------------------------------------------------------------------------------------------------
// A vhost, a producer and the loop on a thread of its own.

/// One test's vhost, a client to look inside it and a tap on every worker event.
struct World {
    url: String,
    vhost: String,
    amqp: Amqp,
    tap: EventTap,
    topology: Topology,
}

/// A fresh vhost with `topology` declared (as any Rafty program declares it at start-up).
fn world(test: &str, topology: Topology) -> World {
    let url = shared_broker().vhost(test);
    let vhost = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .expect("a vhost in the URL")
        .to_owned();
    runtime().block_on(async {
        let conn = connect(&url, "rafty-queue-test setup")
            .await
            .expect("connect");
        ensure(&conn, &topology)
            .await
            .expect("declare the topology");
        let _ = conn.close(200, "declared".into()).await;
    });
    let amqp = Amqp::connect(&url);
    let tap = amqp.tap();
    World {
        url,
        vhost,
        amqp,
        tap,
        topology,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A job like `raftyctl submit` makes.
fn job(name: &str) -> Job {
    Job::new(
        Source {
            path: "/var/lib/rafty/iso/Test Disc.iso".into(),
            media: Media::Dvd,
            size: Some(6_119_424),
            sha256: None,
            label: Some("TEST_DISC".into()),
            unreadable_sectors: None,
            url: None,
        },
        name.to_owned(),
        Origin {
            host: "rafty-queue-test".into(),
            device: None,
        },
    )
}

impl World {
    /// Publish `jobs` the way a producer does: the library publisher, `rafty.rip` with the DVD
    /// routing key, mandatory and confirmed, in order.
    fn publish(&self, jobs: &[&Job]) {
        runtime().block_on(async {
            let conn = connect(&self.url, "rafty-queue-test producer")
                .await
                .expect("connect");
            let publisher = Publisher::open(&conn, APP, Duration::from_secs(10))
                .await
                .expect("a confirming channel");
            for job in jobs {
                publisher
                    .publish_job(RIP_EXCHANGE, &rip_routing_key(Media::Dvd), job)
                    .await
                    .expect("the broker takes the job");
            }
            let _ = conn.close(200, "published".into()).await;
        });
    }

    fn options(&self, host: &str, max_deliveries: Option<u64>) -> ConsumerOptions {
        ConsumerOptions {
            broker: rafty_queue::Broker::single(&self.url).expect("a valid URL"),
            app_id: APP.to_owned(),
            host: host.to_owned(),
            queue: WORK_QUEUE.to_owned(),
            noun: "job",
            topology: self.topology.clone(),
            confirm_timeout: Duration::from_secs(10),
            max_deliveries,
            reconnect_max: Duration::from_secs(1),
            hold: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Messages ready in `queue` (passive declare), waiting up to a few seconds for `want`: the
    /// broker's counters may trail the last settle by a moment.
    fn ready(&self, queue: &str, want: u32) -> u32 {
        let start = Instant::now();
        loop {
            let (ready, _) = self.amqp.counts(queue);
            if ready == want || start.elapsed() > Duration::from_secs(3) {
                return ready;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every `failed` event seen so far (after waiting for `n` of them).
    fn failed_events(&self, n: usize) -> Vec<wire::Failed> {
        wait_for(&format!("{n} failed events"), WAIT, || {
            let all: Vec<wire::Failed> = self
                .amqp
                .drain_events(&self.tap)
                .into_iter()
                .filter_map(|(k, v)| match Event::decode(&k, v.to_string().as_bytes()) {
                    Ok(Event::Failed(f)) => Some(f),
                    _ => None,
                })
                .collect();
            (all.len() >= n).then_some(all)
        })
    }

    /// Every `done` event seen so far (after waiting for `n` of them).
    fn done_events(&self, n: usize) -> Vec<wire::Done> {
        wait_for(&format!("{n} done events"), WAIT, || {
            let all: Vec<wire::Done> = self
                .amqp
                .drain_events(&self.tap)
                .into_iter()
                .filter_map(|(k, v)| match Event::decode(&k, v.to_string().as_bytes()) {
                    Ok(Event::Done(d)) => Some(d),
                    _ => None,
                })
                .collect();
            (all.len() >= n).then_some(all)
        })
    }

    /// Close the connection named `name` from the broker's side (`rabbitmqctl close_connection`), as
    /// a broker does to a consumer it takes a delivery back from.
    fn close_connection_named(&self, broker: &Broker, name: &str) {
        let pid = wait_for(&format!("the connection {name}"), WAIT, || {
            let list = broker.ctl(&[
                "-q",
                "list_connections",
                "--no-table-headers",
                "pid",
                "vhost",
                "client_properties",
            ]);
            list.lines().find_map(|line| {
                let mut cols = line.split('\t');
                let (pid, vhost, props) = (cols.next()?, cols.next()?, cols.next()?);
                (vhost == self.vhost && props.contains(&format!("\"{name}\"")))
                    .then(|| pid.to_owned())
            })
        });
        broker.ctl(&["close_connection", &pid, "rafty-queue test: taken back"]);
    }
}

/// What the fake processor saw of one delivery.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    attempt: u32,
    /// `x-rafty-attempt` as it arrived.
    attempt_header: Option<i64>,
    redelivered: bool,
    /// [`Incoming::routing_key`]: where the job first arrived.
    routing_key: String,
    /// The routing key of this hop.
    hop_key: String,
    /// `x-first-death-queue`: the retry rung it came back from.
    first_death_queue: Option<String>,
    /// `x-delivery-count`: how often the quorum queue delivered it before.
    delivery_count: Option<i64>,
    at: Instant,
    /// Whether `incoming.cancel` fired while it waited for it.
    cancelled: bool,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// What the fake processor does with one delivery.
enum Plan {
    /// Return this at once.
    Now(Outcome),
    /// Wait (at most [`WAIT`]) until `incoming.cancel` fires, then return this.
    UntilCancelled(Outcome),
}

/// A processor that records each call and does what `plan` says (given the delivery and the
/// 0-based number of the call).
struct Fake<F> {
    plan: F,
    calls: Calls,
}

fn fake<F: Fn(&Incoming, usize) -> Plan>(plan: F) -> (Fake<F>, Calls) {
    let calls = Calls::default();
    (
        Fake {
            plan,
            calls: calls.clone(),
        },
        calls,
    )
}

impl<F: Fn(&Incoming, usize) -> Plan> Processor for Fake<F> {
    async fn process(&self, incoming: &Incoming, _events: &Publisher) -> Outcome {
        let headers = incoming.delivery().properties.headers().as_ref();
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                id: incoming.id(),
                attempt: incoming.attempt,
                attempt_header: header_int(headers, HEADER_ATTEMPT),
                redelivered: incoming.redelivered,
                routing_key: incoming.routing_key.clone(),
                hop_key: incoming.delivery().routing_key.as_str().to_owned(),
                first_death_queue: header_str(headers, "x-first-death-queue"),
                delivery_count: header_int(headers, "x-delivery-count"),
                at: Instant::now(),
                cancelled: false,
            });
            calls.len() - 1
        };
        match (self.plan)(incoming, n) {
            Plan::Now(outcome) => outcome,
            Plan::UntilCancelled(outcome) => {
                let fired = tokio::time::timeout(WAIT, incoming.cancel.cancelled())
                    .await
                    .is_ok();
                self.calls.lock().unwrap()[n].cancelled = fired;
                if fired {
                    outcome
                } else {
                    Outcome::Failed(Failure::BadMessage(
                        "rafty-queue test: the cancel never fired".into(),
                    ))
                }
            }
        }
    }
}

/// The `done` outcome of the job in `incoming`.
fn done(incoming: &Incoming, host: &str, skipped: bool) -> Outcome {
    let job = incoming.job().as_ref().expect("the body is a job");
    Outcome::Done(wire::Done {
        id: job.id,
        host: host.to_owned(),
        name: job.output.name.clone(),
        disc: None,
        outputs: Vec::new(),
        skipped,
        attempt: incoming.attempt,
        preset: "Very Fast 480p30".into(),
        handbrake: "fake".into(),
        elapsed_secs: 0.0,
        finished_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap(),
        split: None,
    })
}

/// [`rafty_queue::run`] on a thread with its own single-threaded runtime, as `transcoded` runs it.
struct Loop {
    shutdown: Shutdown,
    thread: Option<JoinHandle<Result<Stats, String>>>,
}

impl Loop {
    fn start<P: Processor + Send + 'static>(opts: ConsumerOptions, processor: P) -> Loop {
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("loop-{}", opts.host))
            .spawn(move || {
                runtime()
                    .block_on(rafty_queue::run(&opts, &processor, &stop))
                    .map_err(|e| e.to_string())
            })
            .expect("start the loop's thread");
        Loop {
            shutdown,
            thread: Some(thread),
        }
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Wait for the loop to return by itself; panics after `timeout`.
    fn join(mut self, timeout: Duration) -> Stats {
        let start = Instant::now();
        while self.running() {
            assert!(
                start.elapsed() < timeout,
                "the loop did not return within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .expect("the loop's thread panicked")
            .expect("the loop returns Ok")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // On a failing test's way out: let the thread end by itself.
        self.shutdown.drain.cancel();
        self.shutdown.abort.cancel();
    }
}

fn calls_of(calls: &Calls) -> Vec<Call> {
    calls.lock().unwrap().clone()
}

fn wait_calls(calls: &Calls, n: usize) -> Vec<Call> {
    wait_for(&format!("{n} calls of the processor"), WAIT, || {
        let now = calls_of(calls);
        (now.len() >= n).then_some(now)
    })
}

fn ladder(delays: &[u64]) -> Topology {
    Topology {
        retry_delays: delays.iter().copied().map(Duration::from_secs).collect(),
        delivery_limit: 10,
    }
}

// ---------------------------------------------------------------------------------------------------
// The tests.

/// Two retryable failures climb the ladder rung by rung (1 s, then 2 s), each copy with the attempt
/// one higher and the original routing key kept, and the third attempt finishes the job.
#[test]
fn a_retryable_failure_climbs_the_ladder_and_the_third_attempt_is_done() {
    let started = Instant::now();
    let w = world("ladder", ladder(&[1, 2]));
    let host = "ladder-worker";
    let job = job("Ladder Film");
    w.publish(&[&job]);
    let (processor, calls) = fake(move |incoming, _| {
        if incoming.attempt < 2 {
            Plan::Now(Outcome::Failed(Failure::SourceUnavailable(
                "rafty-queue test: not there yet".into(),
            )))
        } else {
            Plan::Now(done(incoming, host, false))
        }
    });
    let stats = Loop::start(w.options(host, Some(3)), processor).join(WAIT);

    assert_eq!(
        stats,
        Stats {
            settled: 3,
            retried: 2,
            done: 1,
            ..Stats::default()
        }
    );
    let calls = calls_of(&calls);
    let rung1 = retry_queue("1s");
    let rung2 = retry_queue("2s");
    assert_eq!(rung1, "rafty.transcode.retry.1s");
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(
        calls.iter().map(|c| c.attempt_header).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)],
        "x-rafty-attempt counts up on each copy"
    );
    assert_eq!(
        calls
            .iter()
            .map(|c| c.first_death_queue.as_deref())
            .collect::<Vec<_>>(),
        [None, Some(rung1.as_str()), Some(rung2.as_str())],
        "attempt 1 came back from the 1 s rung, attempt 2 from the 2 s rung (a copy starts a new history)"
    );
    assert!(calls.iter().all(|c| c.id == job.id.to_string()));
    assert!(
        calls.iter().all(|c| c.routing_key == "rafty.rip.iso.dvd"),
        "the original routing key is kept across rungs: {calls:?}"
    );
    assert_eq!(
        calls.iter().map(|c| c.hop_key.as_str()).collect::<Vec<_>>(),
        ["rafty.rip.iso.dvd", WORK_QUEUE, WORK_QUEUE],
        "the retries came back through the rungs' dead-letter routing key"
    );
    let waited_1 = calls[1].at - calls[0].at;
    let waited_2 = calls[2].at - calls[1].at;
    assert!(
        waited_1 >= Duration::from_millis(900) && waited_1 < Duration::from_secs(10),
        "the first rung holds the job about 1 s: {waited_1:?}"
    );
    assert!(
        waited_2 >= Duration::from_millis(1900) && waited_2 < Duration::from_secs(10),
        "the second rung holds the job about 2 s: {waited_2:?}"
    );

    let failed = w.failed_events(2);
    assert_eq!(
        failed
            .iter()
            .map(|f| (f.attempt, f.next.as_str(), f.error_class.as_str()))
            .collect::<Vec<_>>(),
        [
            (0, rung1.as_str(), "retryable"),
            (1, rung2.as_str(), "retryable")
        ]
    );
    assert!(failed.iter().all(|f| f.error_kind == "source-unavailable"
        && f.id == job.id.to_string()
        && f.host == host
        && f.name.as_deref() == Some("Ladder Film")));
    let done = w.amqp.wait_typed(
        &w.tap,
        "done",
        WAIT,
        |e| matches!(e, Event::Done(d) if d.id == job.id),
    );
    let Event::Done(done) = done else {
        unreachable!()
    };
    assert_eq!((done.attempt, done.host.as_str()), (2, host));
    assert!(!done.skipped);

    for queue in [WORK_QUEUE, &rung1, &rung2, DEAD_QUEUE] {
        assert_eq!(w.ready(queue, 0), 0, "{queue} is empty");
    }
    println!("ladder: {:.1} s", started.elapsed().as_secs_f64());
}

/// A permanent failure goes straight to the dead-letter queue with every header that says why, the
/// body untouched, and a `failed` event that says `dead-letter`.
#[test]
fn a_permanent_failure_is_dead_lettered_with_its_reason_and_the_body_untouched() {
    let started = Instant::now();
    let w = world("dead-permanent", ladder(&[1, 2]));
    let host = "dead-worker";
    let job = job("Permanent Film");
    w.publish(&[&job]);
    let failure = Failure::UnknownPreset("Nonexistent 9000p".into());
    let reason = failure.to_string();
    let (processor, calls) = fake(|_, _| {
        Plan::Now(Outcome::Failed(Failure::UnknownPreset(
            "Nonexistent 9000p".into(),
        )))
    });
    let before = OffsetDateTime::now_utc();
    let stats = Loop::start(w.options(host, Some(1)), processor).join(WAIT);
    assert_eq!(
        stats,
        Stats {
            settled: 1,
            dead: 1,
            ..Stats::default()
        }
    );
    assert_eq!(calls_of(&calls).len(), 1, "no retry of a permanent failure");

    let dead = w.amqp.wait_get(DEAD_QUEUE, WAIT);
    assert_eq!(dead.body, job.to_json(), "the body is byte-identical");
    assert_eq!(dead.message_id, Some(job.id.to_string()));
    assert_eq!(dead.header("x-rafty-error-class"), "permanent");
    assert_eq!(dead.header("x-rafty-error"), reason);
    assert_eq!(dead.header("x-rafty-attempt"), "0");
    assert_eq!(dead.header("x-rafty-host"), host);
    assert_eq!(
        dead.header("x-rafty-original-routing-key"),
        "rafty.rip.iso.dvd"
    );
    assert_eq!(dead.header("x-rafty-original-exchange"), RIP_EXCHANGE);
    let failed_at = OffsetDateTime::parse(dead.header("x-rafty-failed-at"), &Rfc3339)
        .unwrap_or_else(|e| panic!("x-rafty-failed-at is RFC 3339 ({e}): {dead:?}"));
    assert!(
        failed_at >= before - time::Duration::seconds(1)
            && failed_at <= OffsetDateTime::now_utc() + time::Duration::seconds(1),
        "x-rafty-failed-at is when it failed: {failed_at}"
    );

    let failed = w.failed_events(1);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let f = &failed[0];
    assert_eq!(f.next, NEXT_DEAD_LETTER);
    assert!(f.gave_up());
    assert_eq!(
        (
            f.id.as_str(),
            f.error_class.as_str(),
            f.error_kind.as_str(),
            f.error.as_str(),
            f.attempt,
            f.host.as_str()
        ),
        (
            job.id.to_string().as_str(),
            "permanent",
            "unknown-preset",
            reason.as_str(),
            0,
            host
        )
    );
    assert_eq!(f.name.as_deref(), Some("Permanent Film"));

    assert_eq!(w.ready(WORK_QUEUE, 0), 0, "the work queue is empty");
    assert_eq!(w.ready(DEAD_QUEUE, 0), 0, "one dead letter, no more");
    println!(
        "dead letter (permanent): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A retryable failure that outlasts the ladder (one rung here) is dead-lettered as `retryable`,
/// saying how many attempts it had; the copy keeps where the job first arrived and none of the
/// broker's death records from the rung.
#[test]
fn a_retryable_failure_past_the_ladder_is_dead_lettered_as_given_up() {
    let started = Instant::now();
    let w = world("dead-exhausted", ladder(&[1]));
    let host = "exhausted-worker";
    let job = job("Exhausted Film");
    w.publish(&[&job]);
    let (processor, calls) = fake(|_, _| {
        Plan::Now(Outcome::Failed(Failure::DiskFull(
            "/media: rafty-queue test".into(),
        )))
    });
    let stats = Loop::start(w.options(host, Some(2)), processor).join(WAIT);
    assert_eq!(
        stats,
        Stats {
            settled: 2,
            retried: 1,
            dead: 1,
            ..Stats::default()
        }
    );
    let calls = calls_of(&calls);
    assert_eq!(calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        calls[1].first_death_queue.as_deref(),
        Some(retry_queue("1s").as_str()),
        "the second attempt came back from the rung"
    );

    let dead = w.amqp.wait_get(DEAD_QUEUE, WAIT);
    assert_eq!(dead.body, job.to_json(), "the body is byte-identical");
    assert_eq!(dead.header("x-rafty-error-class"), "retryable");
    assert_eq!(
        dead.header("x-rafty-error"),
        "disk full: /media: rafty-queue test (gave up after 2 attempts; the retry ladder has 1 rungs)"
    );
    assert_eq!(dead.header("x-rafty-attempt"), "1");
    assert_eq!(dead.header("x-rafty-host"), host);
    assert_eq!(
        dead.header("x-rafty-original-routing-key"),
        "rafty.rip.iso.dvd"
    );
    assert_eq!(dead.header("x-rafty-original-exchange"), RIP_EXCHANGE);
    assert!(!dead.header("x-rafty-failed-at").is_empty());
    let stale: Vec<&String> = dead
        .headers
        .keys()
        .filter(|k| k.starts_with("x-death") || k.starts_with("x-first-death"))
        .collect();
    assert!(
        stale.is_empty(),
        "the copy starts a new history, without the rung's death records: {stale:?}"
    );

    let failed = w.failed_events(2);
    assert_eq!(
        failed
            .iter()
            .map(|f| (f.attempt, f.next.as_str(), f.error_class.as_str()))
            .collect::<Vec<_>>(),
        [
            (0, retry_queue("1s").as_str(), "retryable"),
            (1, NEXT_DEAD_LETTER, "retryable")
        ]
    );
    // The event says it gave up by its `next`; its error is the failure itself.
    assert!(failed[1].gave_up());
    assert_eq!(failed[1].error, "disk full: /media: rafty-queue test");
    for queue in [WORK_QUEUE, &retry_queue("1s"), DEAD_QUEUE] {
        assert_eq!(w.ready(queue, 0), 0, "{queue} is empty");
    }
    println!(
        "dead letter (ladder exhausted): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Drain lets the job in hand go on; abort stops it: the processor sees `incoming.cancel`, returns
/// `Shutdown`, the loop hands the job back and returns, and the next consumer gets it redelivered.
#[test]
fn abort_stops_the_job_in_hand_and_hands_it_back_to_the_queue() {
    let started = Instant::now();
    let w = world("requeue", ladder(&[1, 2]));
    let job = job("Requeued Film");
    w.publish(&[&job]);
    let (processor, calls) = fake(|_, _| Plan::UntilCancelled(Outcome::Failed(Failure::Shutdown)));
    let worker = Loop::start(w.options("requeue-worker", None), processor);
    wait_calls(&calls, 1);

    worker.shutdown.drain.cancel();
    std::thread::sleep(Duration::from_millis(500));
    assert!(worker.running(), "drain alone lets the job in hand go on");
    assert!(
        !calls_of(&calls)[0].cancelled,
        "drain does not cancel the work"
    );
    worker.shutdown.abort.cancel();
    let stats = worker.join(Duration::from_secs(15));
    assert_eq!(
        stats,
        Stats {
            settled: 1,
            requeued: 1,
            ..Stats::default()
        }
    );
    let first = calls_of(&calls);
    assert_eq!(first.len(), 1);
    assert!(first[0].cancelled, "abort fired incoming.cancel");
    assert!(!first[0].redelivered);

    assert_eq!(
        w.ready(WORK_QUEUE, 1),
        1,
        "the job is back in the work queue"
    );
    assert_eq!(w.ready(DEAD_QUEUE, 0), 0, "no dead letter");
    let failed = w.failed_events(1);
    assert_eq!(
        failed
            .iter()
            .map(|f| (
                f.next.as_str(),
                f.error_class.as_str(),
                f.error_kind.as_str()
            ))
            .collect::<Vec<_>>(),
        [(NEXT_REQUEUED, "requeue", "shutdown")]
    );

    // The next consumer gets the same job, marked redelivered, at the same attempt.
    let host = "requeue-successor";
    let (processor, calls) = fake(move |incoming, _| Plan::Now(done(incoming, host, false)));
    let stats = Loop::start(w.options(host, Some(1)), processor).join(WAIT);
    assert_eq!(stats.done, 1);
    let again = calls_of(&calls);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, job.id.to_string());
    assert!(again[0].redelivered, "the broker marks it redelivered");
    assert_eq!(again[0].attempt, 0, "a requeue is not an attempt");
    assert_eq!(
        again[0].delivery_count,
        Some(1),
        "the quorum queue counts the hand-back"
    );
    assert_eq!(w.ready(WORK_QUEUE, 0), 0);
    println!(
        "requeue on shutdown: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The broker takes the delivery back (it closes the worker's connection): the work in hand is
/// cancelled at once, the loop reconnects by itself, gets the job again and finishes it.
#[test]
fn a_delivery_taken_back_by_the_broker_stops_its_work_and_comes_back_to_the_same_loop() {
    let started = Instant::now();
    let w = world("taken-back", ladder(&[1, 2]));
    let host = "taken-back-worker";
    let job = job("Taken Back Film");
    w.publish(&[&job]);
    let (processor, calls) = fake(move |incoming, n| {
        if n == 0 {
            Plan::UntilCancelled(Outcome::Failed(Failure::Shutdown))
        } else {
            Plan::Now(done(incoming, host, false))
        }
    });
    let worker = Loop::start(w.options(host, Some(1)), processor);
    wait_calls(&calls, 1);
    let cut = Instant::now();
    w.close_connection_named(shared_broker(), &format!("{APP}@{host}"));
    let stats = worker.join(WAIT);
    let took = cut.elapsed();

    assert_eq!(
        stats,
        Stats {
            settled: 1,
            done: 1,
            ..Stats::default()
        },
        "the taken-back delivery is not settled by this loop, its second delivery is"
    );
    let calls = calls_of(&calls);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].cancelled, "the work in hand was told to stop");
    assert!(!calls[0].redelivered);
    assert_eq!(calls[1].id, job.id.to_string());
    assert!(calls[1].redelivered, "the same job, delivered again");
    assert_eq!(calls[1].attempt, 0, "a take-back is not an attempt");
    let done = w.amqp.wait_typed(
        &w.tap,
        "done",
        WAIT,
        |e| matches!(e, Event::Done(d) if d.id == job.id),
    );
    assert_eq!(done.host(), host);
    let failed = w.failed_events(0);
    assert!(
        failed.is_empty(),
        "a taken-back delivery is not a failure: {failed:?}"
    );
    assert_eq!(w.ready(DEAD_QUEUE, 0), 0, "nothing dead-lettered");
    assert_eq!(w.ready(WORK_QUEUE, 0), 0, "nothing left");
    println!(
        "taken back: {:.1} s ({:.1} s from the cut to done)",
        started.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
}

/// The same job delivered twice (a producer's outbox that crashed between the confirm and noting it
/// sends it again): the processor knows it finished it and does no work the second time; both
/// deliveries are acked with a `done` event each.
#[test]
fn a_job_already_finished_is_done_again_without_work_and_acked() {
    let started = Instant::now();
    let w = world("redelivered-done", ladder(&[1, 2]));
    let host = "sidecar-worker";
    let job = job("Twice Film");
    w.publish(&[&job, &job]);
    let finished: Arc<Mutex<HashSet<uuid::Uuid>>> = Arc::default();
    let work = Arc::new(AtomicUsize::new(0));
    let worked = work.clone();
    let (processor, calls) = fake(move |incoming, _| {
        let id = incoming.job().as_ref().expect("a job").id;
        let mut finished = finished.lock().unwrap();
        if finished.contains(&id) {
            return Plan::Now(done(incoming, host, true));
        }
        worked.fetch_add(1, Ordering::SeqCst);
        finished.insert(id);
        Plan::Now(done(incoming, host, false))
    });
    let stats = Loop::start(w.options(host, Some(2)), processor).join(WAIT);
    assert_eq!(
        stats,
        Stats {
            settled: 2,
            done: 2,
            ..Stats::default()
        }
    );
    assert_eq!(work.load(Ordering::SeqCst), 1, "one unit of work");
    let calls = calls_of(&calls);
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.id == job.id.to_string()));
    let mut done: Vec<(uuid::Uuid, bool)> =
        w.done_events(2).iter().map(|d| (d.id, d.skipped)).collect();
    done.sort();
    assert_eq!(done, [(job.id, false), (job.id, true)]);
    assert_eq!(w.ready(WORK_QUEUE, 0), 0, "both acked");
    assert_eq!(w.ready(DEAD_QUEUE, 0), 0);
    println!(
        "redelivered finished job: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `max_deliveries` ends the loop by itself after that many settled deliveries, and the rest stay
/// in the queue untouched (not delivered and handed back).
#[test]
fn max_deliveries_stops_the_loop_and_leaves_the_rest_queued() {
    let started = Instant::now();
    let w = world("max-deliveries", ladder(&[1, 2]));
    let host = "max-worker";
    let jobs: Vec<Job> = (0..5).map(|i| job(&format!("Film {i}"))).collect();
    w.publish(&jobs.iter().collect::<Vec<_>>());
    let (processor, calls) = fake(move |incoming, _| Plan::Now(done(incoming, host, false)));
    let worker = Loop::start(w.options(host, Some(2)), processor);
    let stats = worker.join(WAIT);
    assert_eq!(
        stats,
        Stats {
            settled: 2,
            done: 2,
            ..Stats::default()
        }
    );
    let calls = calls_of(&calls);
    assert_eq!(
        calls.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        jobs[..2]
            .iter()
            .map(|j| j.id.to_string())
            .collect::<Vec<_>>(),
        "the first two, in order"
    );
    assert_eq!(w.ready(WORK_QUEUE, 3), 3);
    let left: Vec<rafty_testkit::Message> = std::iter::from_fn(|| w.amqp.get(WORK_QUEUE)).collect();
    assert_eq!(
        left.iter()
            .map(|m| m.message_id.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        jobs[2..]
            .iter()
            .map(|j| j.id.to_string())
            .collect::<Vec<_>>(),
        "the other three stay, in order"
    );
    assert!(
        left.iter()
            .all(|m| matches!(m.header("x-delivery-count"), "" | "0")),
        "none of them was delivered and handed back: {:?}",
        left.iter().map(|m| &m.headers).collect::<Vec<_>>()
    );
    assert_eq!(w.done_events(2).len(), 2);
    println!("max_deliveries: {:.1} s", started.elapsed().as_secs_f64());
}
