//! Failure paths: how long after a retryable failure the job comes back (against the retry rung's
//! TTL), and how long after a permanent failure the job can be taken from `rafty.transcode.dead`.
//!
//! One worker runs the product's loop ([`rafty_queue::run`]) with the ladder `["1s", "2s"]`.
//! Its processor fails `retry-…` jobs as `SourceUnavailable` (retryable) on their first attempts and
//! `dead-…` jobs as `BadMessage` (permanent), and records when it returned each failure and when each
//! attempt arrived. Redelivery = the next attempt's arrival minus the failure's return (the copy to
//! the rung, its confirm, the ack, the TTL, the broker's dead-lettering back to the work queue and the
//! delivery are all inside). Dead letter = arrival at a consumer of `rafty.transcode.dead` minus the
//! failure's return. Jobs are submitted 100 ms (retries) or 20 ms (dead letters) apart so that they do
//! not queue behind each other.
//!
//! Baselines, measured in the same run on queues declared like the product's: the same hop done by
//! minimal lapin loops. A loop consumes a job and, before its ack, publishes a copy with a confirm to a
//! TTL queue declared like the rung (whose dead letters go to a queue a second loop consumes), or to a
//! fanout exchange bound to a quorum queue (which a second loop consumes); the figure is the second
//! loop's delivery minus the first loop's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use rafty_core::names::{DEAD_QUEUE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_queue::{Publisher, declare};
use rafty_testkit::{Broker, Env};

use crate::fleet::{
    Arrival, BenchProcessor, CONFIRM_TIMEOUT, Client, DVD_KEY, LapinLoop, Record, Spread, Then,
    collect, job, job_properties, rung_args, runtime, spawn_lapin_loop, spawn_worker, topology,
    work_queue_args,
};

/// Where the baseline's TTL queues send their dead letters.
const TTL_BACK: &str = "rafty-bench.ttl.back";
/// The baseline's dead-letter exchange (fanout) and queue.
const DEAD_BASELINE: &str = "rafty-bench.dead";
/// The queue the baseline's dead-lettering loop consumes.
const DEAD_IN: &str = "rafty-bench.in.dead";
const RETRY_GAP: Duration = Duration::from_millis(100);
const DEAD_GAP: Duration = Duration::from_millis(20);

/// Sizes of a run.
pub struct Params {
    /// Rungs measured (the first `rungs` of the ladder).
    pub rungs: usize,
    /// Retried jobs per repetition.
    pub retries: usize,
    /// Dead-lettered jobs per repetition.
    pub dead: usize,
    /// Counted repetitions.
    pub reps: usize,
    /// Whether a warm-up round runs first.
    pub warmup: bool,
}

impl Params {
    /// Full or quick.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                rungs: 1,
                retries: 3,
                dead: 20,
                reps: 1,
                warmup: false,
            }
        } else {
            Params {
                rungs: 2,
                retries: 20,
                dead: 100,
                reps: 3,
                warmup: true,
            }
        }
    }

    /// One sentence for docs/benchmarks.md.
    pub fn describe(&self) -> String {
        format!(
            "{} retried jobs (through {} rung(s)) and {} dead-lettered jobs per repetition, {} repetition(s){}; \
             median (min–max) over every job",
            self.retries,
            self.rungs,
            self.dead,
            self.reps,
            if self.warmup { " after a warm-up" } else { "" }
        )
    }
}

/// Rows of the results table.
pub fn bench(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    let env = Env::new(broker, "failures");
    runtime().block_on(run(&env.url, p))
}

fn rung_queue(ttl: Duration) -> String {
    format!("rafty-bench.ttl.{}ms", ttl.as_millis())
}

fn rung_in(ttl: Duration) -> String {
    format!("rafty-bench.in.{}ms", ttl.as_millis())
}

/// Every figure, in seconds.
#[derive(Default)]
struct Samples {
    /// Per rung: Rafty's failure → redelivery.
    redelivery: Vec<Vec<f64>>,
    /// Per rung: the lapin loops doing the same hop.
    ttl_base: Vec<Vec<f64>>,
    /// Rafty's failure → dead-letter delivery.
    dead: Vec<f64>,
    /// The lapin loops doing the same hop.
    dead_base: Vec<f64>,
}

/// The consumers and the publisher a round uses.
struct Rig {
    client: Client,
    publisher: Publisher,
    records: tokio::sync::mpsc::UnboundedReceiver<Record>,
    /// Consumer of `rafty.transcode.dead`.
    dead: LapinLoop,
    /// Per rung: the loop forwarding to its TTL queue.
    forward_ttl: Vec<LapinLoop>,
    /// Consumer of the TTL queues' dead letters.
    back: LapinLoop,
    /// The loop forwarding to the baseline's fanout exchange.
    forward_dead: LapinLoop,
    /// Consumer of the baseline's dead-letter queue.
    dead_base: LapinLoop,
}

async fn run(url: &str, p: &Params) -> anyhow::Result<Vec<String>> {
    let ladder: Vec<Duration> = topology().retry_delays.into_iter().take(p.rungs).collect();
    let client = Client::open(url).await?;
    declare(&client.ch, &topology()).await?;
    client.queue(TTL_BACK, &work_queue_args()).await?;
    for ttl in &ladder {
        client.queue(&rung_in(*ttl), &work_queue_args()).await?;
        client
            .queue(&rung_queue(*ttl), &rung_args(*ttl, TTL_BACK))
            .await?;
    }
    client.queue(DEAD_IN, &work_queue_args()).await?;
    client.exchange(DEAD_BASELINE, ExchangeKind::Fanout).await?;
    client.queue(DEAD_BASELINE, &[]).await?;
    client.bind(DEAD_BASELINE, DEAD_BASELINE, "").await?;

    let (tx, records) = tokio::sync::mpsc::unbounded_channel();
    let processor = BenchProcessor {
        worker: 0,
        cost: Duration::ZERO,
        fail_attempts: p.rungs as u32,
        records: tx,
    };
    let worker = spawn_worker(url, processor, None);
    let forward_ttl = ladder
        .iter()
        .map(|ttl| {
            spawn_lapin_loop(
                url,
                &rung_in(*ttl),
                None,
                Then::Forward(String::new(), rung_queue(*ttl)),
            )
        })
        .collect();
    let mut rig = Rig {
        publisher: Publisher::open(&client.conn, "raftyctl", CONFIRM_TIMEOUT).await?,
        records,
        dead: spawn_lapin_loop(url, DEAD_QUEUE, None, Then::Ack),
        forward_ttl,
        back: spawn_lapin_loop(url, TTL_BACK, None, Then::Ack),
        forward_dead: spawn_lapin_loop(
            url,
            DEAD_IN,
            None,
            Then::Forward(DEAD_BASELINE.into(), String::new()),
        ),
        dead_base: spawn_lapin_loop(url, DEAD_BASELINE, None, Then::Ack),
        client,
    };
    for queue in [WORK_QUEUE, DEAD_QUEUE, TTL_BACK, DEAD_IN, DEAD_BASELINE] {
        rig.client.wait_consumers(queue, 1).await?;
    }
    for ttl in &ladder {
        rig.client.wait_consumers(&rung_in(*ttl), 1).await?;
    }

    let mut s = Samples {
        redelivery: vec![vec![]; ladder.len()],
        ttl_base: vec![vec![]; ladder.len()],
        ..Default::default()
    };
    let rounds = usize::from(p.warmup) + p.reps;
    for round in 0..rounds {
        let counted = !p.warmup || round > 0;
        let (retries, dead) = if counted { (p.retries, p.dead) } else { (2, 5) };
        let mut got = Samples {
            redelivery: vec![vec![]; ladder.len()],
            ttl_base: vec![vec![]; ladder.len()],
            ..Default::default()
        };
        retry_round(&mut rig, &ladder, round, retries, &mut got).await?;
        dead_round(&mut rig, round, dead, &mut got).await?;
        eprintln!(
            "rafty-bench: failures {} {}/{rounds}: redelivery {:?} s vs lapin {:?} s; dead letter {:.2} vs lapin {:.2} ms (medians)",
            if counted { "round" } else { "warm-up" },
            round + 1,
            got.redelivery
                .iter()
                .map(|v| (Spread::of(v).median * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            got.ttl_base
                .iter()
                .map(|v| (Spread::of(v).median * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            Spread::of(&got.dead).median * 1000.0,
            Spread::of(&got.dead_base).median * 1000.0,
        );
        if counted {
            for rung in 0..ladder.len() {
                s.redelivery[rung].append(&mut got.redelivery[rung]);
                s.ttl_base[rung].append(&mut got.ttl_base[rung]);
            }
            s.dead.append(&mut got.dead);
            s.dead_base.append(&mut got.dead_base);
        }
    }
    worker.stop().await?;
    for mut consumer in [rig.dead, rig.back, rig.forward_dead, rig.dead_base]
        .into_iter()
        .chain(rig.forward_ttl)
    {
        consumer.stop().await?;
    }
    rig.client.close().await;

    let mut rows = Vec::new();
    for (rung, ttl) in ladder.iter().enumerate() {
        let r = Spread::of(&s.redelivery[rung]);
        let b = Spread::of(&s.ttl_base[rung]);
        let ttl_s = ttl.as_secs_f64();
        rows.push(format!(
            "| retry: failure → redelivery, rung {} ({ttl_s} s TTL), {} jobs (s) | {} | rung TTL {ttl_s:.3}; lapin loops, same hop {} | {:.3}× TTL ({:.3}× lapin) | | |",
            rung + 1,
            s.redelivery[rung].len(),
            r.show(3),
            b.show(3),
            r.median / ttl_s,
            r.median / b.median,
        ));
    }
    let ms = |v: &[f64]| v.iter().map(|x| x * 1000.0).collect::<Vec<_>>();
    let d = Spread::of(&ms(&s.dead));
    let b = Spread::of(&ms(&s.dead_base));
    rows.push(format!(
        "| dead letter: permanent failure → delivered from {DEAD_QUEUE}, {} jobs (ms) | {} | lapin loops, same hop {} | {:.2}× | | |",
        s.dead.len(),
        d.show(2),
        b.show(2),
        d.median / b.median
    ));
    Ok(rows)
}

/// Seconds from each forwarding loop's delivery to the collecting loop's delivery of the same message.
fn hops(from: &[Arrival], to: &[Arrival]) -> anyhow::Result<Vec<f64>> {
    let sent: HashMap<&str, Instant> = from
        .iter()
        .map(|a| (a.message_id.as_deref().unwrap_or_default(), a.at))
        .collect();
    to.iter()
        .map(|a| {
            let id = a.message_id.as_deref().unwrap_or_default();
            let t0 = sent
                .get(id)
                .ok_or_else(|| anyhow::anyhow!("{id} arrived but was never forwarded"))?;
            Ok(a.at.duration_since(*t0).as_secs_f64())
        })
        .collect()
}

async fn retry_round(
    rig: &mut Rig,
    ladder: &[Duration],
    round: usize,
    jobs: usize,
    got: &mut Samples,
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(30) + ladder.iter().sum::<Duration>() * 2;
    // Rafty: retryable failures through the rungs, then done.
    for i in 0..jobs {
        let job = job(format!("retry-{round}-{i}"));
        rig.publisher
            .publish_job(RIP_EXCHANGE, DVD_KEY, &job)
            .await?;
        tokio::time::sleep(RETRY_GAP).await;
    }
    let records = collect(
        &mut rig.records,
        jobs * (ladder.len() + 1),
        deadline,
        "failures: attempts",
    )
    .await?;
    let mut by_job: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in &records {
        by_job.entry(r.id.as_str()).or_default().push(r);
    }
    for attempts in by_job.values_mut() {
        attempts.sort_by_key(|r| r.attempt);
        let seen: Vec<u32> = attempts.iter().map(|r| r.attempt).collect();
        anyhow::ensure!(
            seen == (0..=ladder.len() as u32).collect::<Vec<_>>(),
            "job {} came as attempts {seen:?}",
            attempts[0].id
        );
        for (rung, pair) in attempts.windows(2).enumerate() {
            got.redelivery[rung].push(pair[1].start.duration_since(pair[0].end).as_secs_f64());
        }
    }

    // The lapin loops: the same hop through a TTL queue like each rung.
    for i in 0..jobs {
        for ttl in ladder {
            let job = job(format!("ttl-{round}-{i}"));
            let props = job_properties(&job);
            rig.client
                .publish("", &rung_in(*ttl), &job.to_json(), props)
                .await?;
        }
        tokio::time::sleep(RETRY_GAP).await;
    }
    let back = collect(
        &mut rig.back.arrivals,
        jobs * ladder.len(),
        deadline,
        "failures: TTL baseline",
    )
    .await?;
    for (rung, forward) in rig.forward_ttl.iter_mut().enumerate() {
        let sent = collect(&mut forward.arrivals, jobs, deadline, "failures: forwarded").await?;
        let ids: std::collections::HashSet<&str> = sent
            .iter()
            .map(|a| a.message_id.as_deref().unwrap_or_default())
            .collect();
        let mine: Vec<Arrival> = back
            .iter()
            .filter(|a| ids.contains(a.message_id.as_deref().unwrap_or_default()))
            .cloned()
            .collect();
        got.ttl_base[rung].extend(hops(&sent, &mine)?);
    }
    Ok(())
}

async fn dead_round(
    rig: &mut Rig,
    round: usize,
    jobs: usize,
    got: &mut Samples,
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(60);
    // Rafty: permanent failures, time to delivery from the dead-letter queue.
    for i in 0..jobs {
        let job = job(format!("dead-{round}-{i}"));
        rig.publisher
            .publish_job(RIP_EXCHANGE, DVD_KEY, &job)
            .await?;
        tokio::time::sleep(DEAD_GAP).await;
    }
    let failed = collect(&mut rig.records, jobs, deadline, "failures: permanent").await?;
    let parked = collect(
        &mut rig.dead.arrivals,
        jobs,
        deadline,
        "failures: dead letters",
    )
    .await?;
    let ends: HashMap<&str, Instant> = failed.iter().map(|r| (r.id.as_str(), r.end)).collect();
    for a in &parked {
        let id = a.message_id.as_deref().unwrap_or_default();
        let end = ends
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("dead letter {id} was not failed by the bench"))?;
        got.dead.push(a.at.duration_since(*end).as_secs_f64());
    }

    // The lapin loops: consume, publish a copy to a fanout exchange with a confirm, ack; consume it.
    for i in 0..jobs {
        let job = job(format!("dead-base-{round}-{i}"));
        rig.client
            .publish("", DEAD_IN, &job.to_json(), job_properties(&job))
            .await?;
        tokio::time::sleep(DEAD_GAP).await;
    }
    let sent = collect(
        &mut rig.forward_dead.arrivals,
        jobs,
        deadline,
        "failures: forwarded",
    )
    .await?;
    let arrived = collect(
        &mut rig.dead_base.arrivals,
        jobs,
        deadline,
        "failures: dead-letter baseline",
    )
    .await?;
    got.dead_base.extend(hops(&sent, &arrived)?);
    Ok(())
}
