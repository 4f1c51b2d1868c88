//! Fleet scaling: 1, 2 and 4 workers on one broker draining a queue of jobs whose cost is fixed and
//! known, against the ideal N × (1 / cost).
//!
//! Each worker is the product's loop ([`rafty_queue::run`]) on a thread of its own with its own
//! connection, as separate `transcoded` processes would be; its processor sleeps for the job's cost (this
//! machine has 2 cores, so a sleep, not CPU work, stands for the encode). The workers first wait on the
//! empty work queue; then M jobs are queued at full speed, and the figure is M divided by the time from
//! the first job's start to the last job's end. Every settle (confirmed `done` event, ack) and every
//! dispatch in between counts against the workers.

use std::time::{Duration, Instant};

use rafty_core::names::{RIP_EXCHANGE, WORK_QUEUE};
use rafty_queue::declare;
use rafty_testkit::{Broker, Env};

use crate::fleet::{
    BenchProcessor, Client, DVD_KEY, Spread, collect, job, runtime, spawn_worker, topology,
};
use crate::verdict;

/// Worker counts measured.
const FLEET: [usize; 3] = [1, 2, 4];

/// Sizes of a run.
pub struct Params {
    /// The cost of one job.
    pub cost: Duration,
    /// Jobs per measurement.
    pub jobs: usize,
    /// Counted repetitions of the three fleet sizes.
    pub reps: usize,
    /// Whether a warm-up round (4 workers, 16 jobs) runs first.
    pub warmup: bool,
}

impl Params {
    /// Full or quick.
    pub fn new(quick: bool) -> Params {
        Params {
            cost: Duration::from_millis(50),
            jobs: if quick { 24 } else { 200 },
            reps: if quick { 1 } else { 3 },
            warmup: !quick,
        }
    }

    /// One sentence for docs/benchmarks.md.
    pub fn describe(&self) -> String {
        format!(
            "{} jobs of {} ms each per measurement, median of {} repetitions{}",
            self.jobs,
            self.cost.as_millis(),
            self.reps,
            if self.warmup { " after a warm-up" } else { "" }
        )
    }
}

/// Rows of the results table.
pub fn bench(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    let env = Env::new(broker, "scaling");
    runtime().block_on(run(&env.url, p))
}

async fn run(url: &str, p: &Params) -> anyhow::Result<Vec<String>> {
    let client = Client::open(url).await?;
    declare(&client.ch, &topology()).await?;
    if p.warmup {
        round(url, &client, 4, 16, p.cost).await?;
    }
    let mut rates: Vec<Vec<f64>> = vec![vec![]; FLEET.len()];
    for rep in 0..p.reps {
        for (i, &workers) in FLEET.iter().enumerate() {
            let (r, shape) = round(url, &client, workers, p.jobs, p.cost).await?;
            eprintln!(
                "rafty-bench: scaling {}/{}: {workers} worker(s): {r:.1} jobs/s (ideal {:.1}); {shape}",
                rep + 1,
                p.reps,
                ideal(workers, p.cost)
            );
            rates[i].push(r);
        }
    }
    client.close().await;

    let cost_ms = p.cost.as_millis();
    Ok(FLEET
        .iter()
        .zip(&rates)
        .map(|(&workers, v)| {
            let s = Spread::of(v);
            let ideal = ideal(workers, p.cost);
            let ratio = s.median / ideal;
            let (target, met) = if workers == 4 {
                ("≥ 0.90×", verdict(ratio >= 0.9))
            } else {
                ("", "")
            };
            format!(
                "| scaling: {workers} worker(s), {} jobs of {cost_ms} ms (jobs/s) | {} | ideal {workers} × 1/{cost_ms} ms = {ideal:.1} | {ratio:.3}× | {target} | {met} |",
                p.jobs,
                s.show(1),
            )
        })
        .collect())
}

fn ideal(workers: usize, cost: Duration) -> f64 {
    workers as f64 / cost.as_secs_f64()
}

/// `workers` workers drain `jobs` jobs; returns jobs/s and where the time went (jobs per worker, mean
/// time in the processor, mean gap between one job's end and the same worker's next start).
async fn round(
    url: &str,
    client: &Client,
    workers: usize,
    jobs: usize,
    cost: Duration,
) -> anyhow::Result<(f64, String)> {
    // The previous round's workers are gone, so the count below is this round's.
    client.wait_consumers(WORK_QUEUE, 0).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet: Vec<_> = (0..workers)
        .map(|w| {
            let processor = BenchProcessor {
                worker: w,
                cost,
                fail_attempts: 0,
                records: tx.clone(),
            };
            spawn_worker(url, processor, None)
        })
        .collect();
    drop(tx);
    client.wait_consumers(WORK_QUEUE, workers as u32).await?;
    let batch = (0..jobs).map(|i| job(format!("scale-{i}"))).collect();
    client.fill(RIP_EXCHANGE, DVD_KEY, batch).await?;
    let timeout = cost * jobs as u32 * 3 + Duration::from_secs(30);
    let records = collect(&mut rx, jobs, timeout, "scaling: jobs done").await?;
    for worker in fleet {
        worker.stop().await?;
    }
    client.ensure_empty(WORK_QUEUE).await?;
    let first = records.iter().map(|r| r.start).min().expect("jobs");
    let last: Instant = records.iter().map(|r| r.end).max().expect("jobs");
    let mut per_worker = vec![vec![]; workers];
    for r in &records {
        per_worker[r.worker].push(r);
    }
    let busy: f64 = records
        .iter()
        .map(|r| r.end.duration_since(r.start).as_secs_f64())
        .sum::<f64>()
        / jobs as f64;
    let mut gaps = vec![];
    for mine in &mut per_worker {
        mine.sort_by_key(|r| r.start);
        gaps.extend(
            mine.windows(2)
                .map(|w| w[1].start.duration_since(w[0].end).as_secs_f64()),
        );
    }
    let gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let shape = format!(
        "jobs per worker {:?}, mean time in the processor {:.2} ms, mean gap to the next job {:.2} ms",
        per_worker.iter().map(Vec::len).collect::<Vec<_>>(),
        busy * 1000.0,
        gap * 1000.0
    );
    Ok((
        jobs as f64 / last.duration_since(first).as_secs_f64(),
        shape,
    ))
}
