//! Dispatch: how fast the product's worker loop takes jobs when the work itself costs nothing, and
//! how long a submitted job waits before an idle worker starts it, each next to a minimal lapin loop on
//! the same broker; and the publish rate of the library publisher next to raw lapin.
//!
//! Rafty's side: jobs go to `rafty.rip` (`rafty.rip.iso.dvd`) and the real work queue
//! `rafty.transcode`, and are consumed by [`rafty_queue::run`] (prefetch 1, decode, process,
//! confirmed `done` event, ack) with a processor that returns at once and records when it was called.
//! The baseline: a quorum queue declared with the work queue's arguments (`rafty-bench.lapin`, bound
//! to the same exchange) consumed by a minimal lapin loop (prefetch 1, consume, ack). The sides take
//! turns in small batches (the order rotating), so that whatever else runs on the machine weighs on
//! both alike. Each repetition:
//!
//! 1. publish rate: N jobs per side into the empty queues, one confirm awaited per job: the library
//!    publisher (`Publisher::publish_job`, as `raftyctl submit` does) vs raw lapin publishing the same
//!    bodies and properties; the queues are purged afterwards;
//! 2. throughput: per batch, the jobs are queued at full speed, then drained by one consumer started
//!    on them; deliveries per second from the first start to the last, summed over the batches of N
//!    jobs. Two more consumers, diagnoses and not targets: the lapin loop publishing an event and
//!    awaiting its confirm before each ack, as the product's protocol requires; and the product's loop
//!    with a durable quorum queue bound to its `done` events, as `rafty-notify` declares one;
//! 3. latency: both consumers waiting on their empty queues; jobs submitted one at a time, to each side
//!    in turn, each after the previous one started and a 3 ms pause (so its consumer has settled it and
//!    is idle again); a job's latency is its start minus its `created_at`, stamped just before it is
//!    published.

use std::time::{Duration, Instant};

use rafty_core::names::{EVENTS_EXCHANGE, RIP_EXCHANGE, WORK_QUEUE, event_routing_key};
use rafty_queue::{Publisher, declare};
use rafty_testkit::{Broker, Env};

use crate::fleet::{
    BenchProcessor, CONFIRM_TIMEOUT, Client, DVD_KEY, Spread, Then, collect, job, job_properties,
    percentile, runtime, spawn_lapin_loop, spawn_worker, topology, work_queue_args,
};
use crate::verdict;

/// The baseline's queue, declared like the work queue and bound to `rafty.rip` with its own name.
const LAPIN_QUEUE: &str = "rafty-bench.lapin";
/// The diagnosis' listener: a durable quorum queue bound to `rafty.transcode.done`.
const LISTENER: &str = "rafty-bench.listener";
/// Pause after a job started before the next is submitted, in the latency measurement.
const GAP: Duration = Duration::from_millis(3);
/// Drains and waits must not hang a run, even on a busy machine.
const WAIT: Duration = Duration::from_secs(120);

/// Sizes of a run.
pub struct Params {
    /// Jobs per side per publish-rate and throughput measurement.
    pub jobs: usize,
    /// Jobs per side per batch.
    pub batch: usize,
    /// Jobs per side per latency measurement.
    pub latency_jobs: usize,
    /// Warm-up rounds (not counted), a tenth of the sizes.
    pub warmup: usize,
    /// Counted rounds.
    pub reps: usize,
}

impl Params {
    /// Full or quick.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                jobs: 300,
                batch: 150,
                latency_jobs: 300,
                warmup: 0,
                reps: 1,
            }
        } else {
            Params {
                jobs: 10_000,
                batch: 1_000,
                latency_jobs: 2_000,
                warmup: 1,
                reps: 3,
            }
        }
    }

    /// One sentence for docs/benchmarks.md.
    pub fn describe(&self) -> String {
        format!(
            "{} jobs per side for the publish rate and the throughput, in turns of {}; {} jobs per side \
             for the latency; median of {} repetition(s) after {} warm-up round(s) a tenth that size",
            self.jobs, self.batch, self.latency_jobs, self.reps, self.warmup
        )
    }
}

/// Who consumes (and publishes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Side {
    /// The library publisher and the product's worker loop.
    Rafty,
    /// Raw lapin publishing, the minimal lapin loop.
    Lapin,
    /// The lapin loop confirming an event before each ack (throughput only).
    LapinEvent,
    /// The product's loop with a durable quorum queue bound to its `done` events, as `rafty-notify`
    /// declares one (throughput only).
    RaftyListened,
}

impl Side {
    fn index(self) -> usize {
        self as usize
    }
}

/// Every figure of every counted round, per side.
#[derive(Default)]
struct Figures {
    publish: [Vec<f64>; 2],
    drain: [Vec<f64>; 4],
    p50: [Vec<f64>; 2],
    p99: [Vec<f64>; 2],
}

/// Rows of the results table.
pub fn bench(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    let env = Env::new(broker, "dispatch");
    runtime().block_on(run(&env.url, p))
}

fn rotated<const N: usize>(mut sides: [Side; N], turn: usize) -> [Side; N] {
    sides.rotate_left(turn % N);
    sides
}

async fn run(url: &str, p: &Params) -> anyhow::Result<Vec<String>> {
    let client = Client::open(url).await?;
    declare(&client.ch, &topology()).await?;
    client.queue(LAPIN_QUEUE, &work_queue_args()).await?;
    client.bind(LAPIN_QUEUE, RIP_EXCHANGE, LAPIN_QUEUE).await?;
    let publisher = Publisher::open(&client.conn, "raftyctl", CONFIRM_TIMEOUT).await?;

    let mut f = Figures::default();
    let rounds = p.warmup + p.reps;
    for round in 0..rounds {
        let counted = round >= p.warmup;
        let scale = if counted { 1 } else { 10 };
        let (n, batch, n_lat) = (p.jobs / scale, p.batch / scale, p.latency_jobs / scale);
        let turns = n.div_ceil(batch);
        let mut line = format!(
            "rafty-bench: dispatch {} {}/{rounds}:",
            if counted { "round" } else { "warm-up" },
            round + 1
        );

        // 1. Publish rate.
        let mut secs = [0.0; 2];
        for turn in 0..turns {
            let size = batch.min(n - turn * batch);
            for side in rotated([Side::Rafty, Side::Lapin], turn) {
                secs[side.index()] += publish(side, &client, &publisher, size).await?;
            }
        }
        for (queue, i) in [(WORK_QUEUE, 0), (LAPIN_QUEUE, 1)] {
            let purged = client.purge(queue).await?;
            anyhow::ensure!(purged as usize == n, "{queue} held {purged} jobs, not {n}");
            let rate = n as f64 / secs[i];
            line.push_str(&format!(" publish {queue} {rate:.0}/s;"));
            if counted {
                f.publish[i].push(rate);
            }
        }

        // 2. Throughput.
        let sides = [
            Side::Rafty,
            Side::Lapin,
            Side::LapinEvent,
            Side::RaftyListened,
        ];
        let mut spans = [(0usize, 0.0); 4];
        for turn in 0..turns {
            let size = batch.min(n - turn * batch);
            for side in rotated(sides, turn) {
                let (intervals, secs) = drain(side, url, &client, size).await?;
                spans[side.index()].0 += intervals;
                spans[side.index()].1 += secs;
            }
        }
        for side in sides {
            let (intervals, secs) = spans[side.index()];
            let rate = intervals as f64 / secs;
            line.push_str(&format!(" drain {side:?} {rate:.0}/s;"));
            if counted {
                f.drain[side.index()].push(rate);
            }
        }

        // 3. Latency.
        let [mut rafty, mut lapin] = latency(url, &client, &publisher, n_lat).await?;
        for (side, lat) in [(Side::Rafty, &mut rafty), (Side::Lapin, &mut lapin)] {
            let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
            line.push_str(&format!(
                " latency {side:?} p50 {p50:.2} p99 {p99:.2} max {:.2} ms;",
                lat[lat.len() - 1]
            ));
            if counted {
                f.p50[side.index()].push(p50);
                f.p99[side.index()].push(p99);
            }
        }
        eprintln!("{line}");
    }
    client.close().await;

    let [rd, ld, ed, nd] = f.drain.each_ref().map(|v| Spread::of(v));
    let [r50, l50] = f.p50.each_ref().map(|v| Spread::of(v));
    let [r99, l99] = f.p99.each_ref().map(|v| Spread::of(v));
    let [rp, lp] = f.publish.each_ref().map(|v| Spread::of(v));
    let (n, n_lat) = (p.jobs, p.latency_jobs);
    Ok(vec![
        format!(
            "| dispatch: {n} queued jobs, trivial processing, one worker (jobs/s) | {} | lapin consume-ack loop {} | {:.2}× | ≥ 0.80× | {} |",
            rd.show(0),
            ld.show(0),
            rd.median / ld.median,
            verdict(rd.median / ld.median >= 0.8)
        ),
        format!(
            "| dispatch, diagnosis: the same vs a lapin loop that also confirms an event before each ack (jobs/s) | {} | lapin loop + confirmed event {} | {:.2}× | | |",
            rd.show(0),
            ed.show(0),
            rd.median / ed.median
        ),
        format!(
            "| dispatch, diagnosis: with a durable quorum queue bound to `done` events, as rafty-notify declares (jobs/s) | {} | no queue bound (first row) {} | {:.2}× | | |",
            nd.show(0),
            rd.show(0),
            nd.median / rd.median
        ),
        format!(
            "| submit → start latency p50, idle worker, {n_lat} jobs (ms) | {} | lapin loop {} | {:.2}× | | |",
            r50.show(2),
            l50.show(2),
            r50.median / l50.median
        ),
        format!(
            "| submit → start latency p99, idle worker, {n_lat} jobs (ms) | {} | lapin loop {} | {:.2}× | ≤ 20 ms | {} |",
            r99.show(2),
            l99.show(2),
            r99.median / l99.median,
            verdict(r99.median <= 20.0)
        ),
        format!(
            "| publish, one confirm awaited per job, {n} jobs (jobs/s) | library publisher {} | raw lapin {} | {:.2}× | | |",
            rp.show(0),
            lp.show(0),
            rp.median / lp.median
        ),
    ])
}

/// Publish `n` jobs one confirm at a time into the side's queue; seconds taken.
pub(crate) async fn publish(
    side: Side,
    client: &Client,
    publisher: &Publisher,
    n: usize,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    if side == Side::Rafty {
        for i in 0..n {
            let job = job(format!("publish-{i}"));
            publisher.publish_job(RIP_EXCHANGE, DVD_KEY, &job).await?;
        }
    } else {
        for i in 0..n {
            let job = job(format!("publish-{i}"));
            let (body, props) = (job.to_json(), job_properties(&job));
            client
                .publish(RIP_EXCHANGE, LAPIN_QUEUE, &body, props)
                .await?;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Queue `n` jobs at full speed, then drain them with a new consumer of the side; the intervals
/// between starts and the seconds from the first start to the last.
pub(crate) async fn drain(
    side: Side,
    url: &str,
    client: &Client,
    n: usize,
) -> anyhow::Result<(usize, f64)> {
    let jobs = (0..n).map(|i| job(format!("dispatch-{i}"))).collect();
    let starts: Vec<Instant> = match side {
        Side::Rafty | Side::RaftyListened => {
            if side == Side::RaftyListened {
                client.queue(LISTENER, &[]).await?;
                client
                    .bind(LISTENER, EVENTS_EXCHANGE, &event_routing_key("done"))
                    .await?;
            }
            client.fill(RIP_EXCHANGE, DVD_KEY, jobs).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let worker = spawn_worker(url, BenchProcessor::trivial(0, tx), Some(n as u64));
            let records = collect(&mut rx, n, WAIT, "dispatch: jobs started").await?;
            worker.finish().await?;
            if side == Side::RaftyListened {
                let events = client.delete_queue(LISTENER).await?;
                anyhow::ensure!(events as usize == n, "{events} done events for {n} jobs");
            }
            records.iter().map(|r| r.start).collect()
        }
        Side::Lapin | Side::LapinEvent => {
            client.fill(RIP_EXCHANGE, LAPIN_QUEUE, jobs).await?;
            let then = if side == Side::Lapin {
                Then::Ack
            } else {
                Then::Event
            };
            let mut consumer = spawn_lapin_loop(url, LAPIN_QUEUE, Some(n), then);
            let arrivals = collect(&mut consumer.arrivals, n, WAIT, "dispatch: deliveries").await?;
            consumer.finish().await?;
            arrivals.iter().map(|a| a.at).collect()
        }
    };
    // Only the side's own queue: the cluster group drains the work queue alone.
    let queue = match side {
        Side::Rafty | Side::RaftyListened => WORK_QUEUE,
        Side::Lapin | Side::LapinEvent => LAPIN_QUEUE,
    };
    client.ensure_empty(queue).await?;
    let first = starts.iter().min().expect("jobs");
    let last = starts.iter().max().expect("jobs");
    Ok((n - 1, last.duration_since(*first).as_secs_f64()))
}

fn ms(created_at: time::OffsetDateTime, start: time::OffsetDateTime) -> f64 {
    (start - created_at).as_seconds_f64() * 1000.0
}

/// Submit `n` jobs to each side, one at a time and in turn, each consumer idle; each job's submit →
/// start in ms, per side.
async fn latency(
    url: &str,
    client: &Client,
    publisher: &Publisher,
    n: usize,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let one = Duration::from_secs(30);
    // The drains' consumers are gone, so the counts below are the new ones.
    client.wait_consumers(WORK_QUEUE, 0).await?;
    client.wait_consumers(LAPIN_QUEUE, 0).await?;
    let (tx, mut records) = tokio::sync::mpsc::unbounded_channel();
    let worker = spawn_worker(url, BenchProcessor::trivial(0, tx), Some(n as u64));
    let mut consumer = spawn_lapin_loop(url, LAPIN_QUEUE, Some(n), Then::Ack);
    client.wait_consumers(WORK_QUEUE, 1).await?;
    client.wait_consumers(LAPIN_QUEUE, 1).await?;
    let mut lat = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..n {
        for side in rotated([Side::Rafty, Side::Lapin], i) {
            let job = job(format!("latency-{i}"));
            if side == Side::Rafty {
                publisher.publish_job(RIP_EXCHANGE, DVD_KEY, &job).await?;
                let record = collect(&mut records, 1, one, "latency: job started").await?;
                let r = &record[0];
                anyhow::ensure!(r.id == job.id.to_string(), "another job started");
                lat[0].push(ms(r.created_at.expect("a bench job"), r.start_wall));
            } else {
                let (body, props) = (job.to_json(), job_properties(&job));
                client
                    .publish(RIP_EXCHANGE, LAPIN_QUEUE, &body, props)
                    .await?;
                let arrival = collect(&mut consumer.arrivals, 1, one, "latency: delivery").await?;
                lat[1].push(ms(job.created_at, arrival[0].wall));
            }
            tokio::time::sleep(GAP).await;
        }
    }
    worker.finish().await?;
    consumer.finish().await?;
    client.ensure_empty(WORK_QUEUE).await?;
    client.ensure_empty(LAPIN_QUEUE).await?;
    Ok(lat)
}
