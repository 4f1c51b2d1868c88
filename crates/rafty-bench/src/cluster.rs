//! Cluster: what a three-node RabbitMQ cluster (docs/cluster.md) costs and what a node's death does,
//! on three nodes of this machine started once for the group by [`rafty_testkit::Cluster`] from the
//! shipped `config/rabbitmq-cluster.conf`.
//!
//! 1. The price of replication, side by side with the bench's one node, in turns as dispatch.rs
//!    takes them: the publish rate of the library publisher (one confirm awaited per job) and the
//!    dispatch rate of the product's worker loop ([`crate::dispatch::drain`]: queued at full speed,
//!    drained by one consumer, first start to last), each on the real topology declared through, and
//!    used through, one node: on the cluster every quorum-queue commit waits for a second node.
//! 2. Fail-over, repeated: a product worker loop ([`rafty_queue::run`] through a
//!    [`rafty_queue::Broker`] holding the three nodes' URLs, as `transcoded` runs it; a job costs
//!    [`JOB_COST`], so a backlog lasts) consumes a backlog while a publisher made by
//!    [`Publisher::connect`] (through its own Broker, on the same node) publishes jobs one confirm at a
//!    time. The node both are connected to is SIGKILLed. The figures: the time from the signal to
//!    the worker's next job start (through another node), and the publisher's longest gap between
//!    two confirms across the kill, next to its longest gap in the [`BEFORE`] before it. The node is
//!    restarted on its data (and every queue caught up) before the next kill.
//!
//! Everything uses the default vhost of the cluster and of the bench's node (no other group does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rafty_core::names::{RIP_EXCHANGE, WORK_QUEUE};
use rafty_queue::{Publisher, declare};
use rafty_testkit::{Broker, Cluster};
use tokio::sync::mpsc;

use crate::dispatch::{Side, drain, publish};
use crate::fleet::{
    APP, BenchProcessor, CONFIRM_TIMEOUT, Client, DVD_KEY, Record, Spread, job, percentile,
    runtime, spawn_worker_on, topology,
};
use crate::verdict;

/// Heartbeat of the cluster URLs (s). A killed node closes its sockets, so it does not matter for
/// a kill; it bounds how long an idle client connection may go unpolled.
const HEARTBEAT: u32 = 5;
/// What a job costs the fail-over worker: a backlog then lasts seconds, and a job in hand when its
/// node dies delays the worker's reaction by at most this.
const JOB_COST: Duration = Duration::from_millis(5);
/// Jobs queued before each kill (several seconds of the worker's work at [`JOB_COST`]).
const BACKLOG: usize = 1500;
/// The publisher runs this long before a kill: its longest gap in it is the baseline.
const BEFORE: Duration = Duration::from_millis(1500);
/// After the kill, the publisher runs until it has been confirmed again for this long.
const AFTER: Duration = Duration::from_millis(1000);
/// How long a worker or a publisher may take to come back before the run fails.
const BACK_WITHIN: Duration = Duration::from_secs(60);
/// The bound tests/cluster.rs asserts (issue 14): a worker reconnected within 2 s of a node kill.
const FAILOVER_TARGET_MS: f64 = 2000.0;

/// Sizes of a run.
pub struct Params {
    /// Jobs per side per publish-rate and dispatch measurement.
    pub jobs: usize,
    /// Jobs per side per turn.
    pub batch: usize,
    /// Warm-up rounds (not counted), a tenth of the sizes.
    pub warmup: usize,
    /// Counted rounds.
    pub reps: usize,
    /// Node kills (each node restarted before the next).
    pub kills: usize,
    /// Whether to ask the cluster, before each kill, whether the node holds the work queue's
    /// leader (a rabbitmqctl call, a second or two: full runs only).
    pub ask_leader: bool,
}

impl Params {
    /// Full or quick.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                jobs: 300,
                batch: 150,
                warmup: 0,
                reps: 1,
                kills: 2,
                ask_leader: false,
            }
        } else {
            Params {
                jobs: 5_000,
                batch: 1_000,
                warmup: 1,
                reps: 3,
                kills: 10,
                ask_leader: true,
            }
        }
    }

    /// One sentence for docs/benchmarks.md.
    pub fn describe(&self) -> String {
        format!(
            "three nodes on this machine vs the bench's one node; {} jobs per side for the publish rate \
             and the dispatch rate, in turns of {}, median of {} repetition(s) after {} warm-up round(s) \
             a tenth that size; {} kills of the node the worker and the publisher are connected to, \
             each node restarted and caught up before the next kill; a fail-over job costs {} ms, \
             {BACKLOG} jobs queued before each kill, the publisher's baseline window {} ms",
            self.jobs,
            self.batch,
            self.reps,
            self.warmup,
            self.kills,
            JOB_COST.as_millis(),
            BEFORE.as_millis()
        )
    }
}

/// Rows of the results table.
pub fn bench(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    let began = Instant::now();
    let cluster = Cluster::start(3);
    eprintln!(
        "rafty-bench: cluster: three nodes formed in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let urls = cluster.urls("%2f", HEARTBEAT);
    let mut rows = runtime().block_on(rates(&broker.url(), &urls[0], p))?;
    rows.extend(failover(&cluster, &urls, p)?);
    Ok(rows)
}

/// The two sides of the rates: the bench's one node, and the cluster used through its node 0.
#[derive(Debug, Clone, Copy)]
enum Where {
    OneNode,
    Cluster,
}

async fn rates(one: &str, cluster: &str, p: &Params) -> anyhow::Result<Vec<String>> {
    let mut sides = Vec::new();
    for url in [one, cluster] {
        let client = Client::open(url).await?;
        declare(&client.ch, &topology()).await?;
        let publisher = Publisher::open(&client.conn, "raftyctl", CONFIRM_TIMEOUT).await?;
        sides.push((url, client, publisher));
    }
    // [one node, cluster] × counted rounds.
    let mut publish_rates: [Vec<f64>; 2] = Default::default();
    let mut drain_rates: [Vec<f64>; 2] = Default::default();
    let rounds = p.warmup + p.reps;
    for round in 0..rounds {
        let counted = round >= p.warmup;
        let scale = if counted { 1 } else { 10 };
        let (n, batch) = (p.jobs / scale, p.batch / scale);
        let turns = n.div_ceil(batch);
        let mut order = [Where::OneNode, Where::Cluster];
        let mut secs = [0.0; 2];
        let mut spans = [(0usize, 0.0); 2];
        for turn in 0..turns {
            let size = batch.min(n - turn * batch);
            for w in order {
                let (_, client, publisher) = &sides[w as usize];
                secs[w as usize] += publish(Side::Rafty, client, publisher, size).await?;
            }
            for w in order {
                let (_, client, _) = &sides[w as usize];
                let purged = client.purge(WORK_QUEUE).await?;
                anyhow::ensure!(purged as usize == size, "{w:?}: {purged} jobs, not {size}");
            }
            for w in order {
                let (url, client, _) = &sides[w as usize];
                let (intervals, s) = drain(Side::Rafty, url, client, size).await?;
                spans[w as usize].0 += intervals;
                spans[w as usize].1 += s;
            }
            order.reverse();
        }
        let mut line = format!(
            "rafty-bench: cluster {} {}/{rounds}:",
            if counted { "round" } else { "warm-up" },
            round + 1
        );
        for w in [Where::OneNode, Where::Cluster] {
            let i = w as usize;
            let (publish_rate, drain_rate) = (n as f64 / secs[i], spans[i].0 as f64 / spans[i].1);
            line.push_str(&format!(
                " {w:?} publish {publish_rate:.0}/s, dispatch {drain_rate:.0}/s;"
            ));
            if counted {
                publish_rates[i].push(publish_rate);
                drain_rates[i].push(drain_rate);
            }
        }
        eprintln!("{line}");
    }
    for (_, client, _) in sides {
        client.close().await;
    }
    let [op, cp] = publish_rates.each_ref().map(|v| Spread::of(v));
    let [od, cd] = drain_rates.each_ref().map(|v| Spread::of(v));
    let n = p.jobs;
    Ok(vec![
        format!(
            "| cluster: dispatch on three nodes, {n} queued jobs, trivial processing, one worker (jobs/s) | {} | one node {} | {:.2}× | | |",
            cd.show(0),
            od.show(0),
            cd.median / od.median
        ),
        format!(
            "| cluster: publish on three nodes, one confirm awaited per job, {n} jobs (jobs/s) | {} | one node {} | {:.2}× | | |",
            cp.show(0),
            op.show(0),
            cp.median / op.median
        ),
    ])
}

/// The node a (masked) URL of the cluster points at.
fn node_of(cluster: &Cluster, url: &str) -> anyhow::Result<usize> {
    url.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .and_then(|port| cluster.node_of_port(port))
        .ok_or_else(|| anyhow::anyhow!("{url} is not a node of the cluster"))
}

/// A publisher made by [`Publisher::connect`] on its own thread and runtime, publishing jobs one
/// confirm at a time until stopped; every confirm's moment is kept.
struct PublishLoop {
    stop: Arc<AtomicBool>,
    confirms: Arc<Mutex<Vec<Instant>>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl PublishLoop {
    fn spawn(broker: rafty_queue::Broker) -> PublishLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let confirms = Arc::new(Mutex::new(Vec::new()));
        let (stopped, kept) = (stop.clone(), confirms.clone());
        let thread = std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                runtime().block_on(async move {
                    let (publisher, _conn) = Publisher::connect(
                        &broker,
                        "rafty-bench publisher",
                        APP,
                        CONFIRM_TIMEOUT,
                        None,
                    )
                    .await?;
                    let mut i = 0u64;
                    while !stopped.load(Ordering::SeqCst) {
                        i += 1;
                        let job = job(format!("cluster-publish-{i}"));
                        publisher.publish_job(RIP_EXCHANGE, DVD_KEY, &job).await?;
                        kept.lock().unwrap().push(Instant::now());
                    }
                    publisher.close().await;
                    Ok(())
                })
            })
            .expect("start the publisher thread");
        PublishLoop {
            stop,
            confirms,
            thread: Some(thread),
        }
    }

    fn confirmed(&self) -> usize {
        self.confirms.lock().unwrap().len()
    }

    fn last(&self) -> Option<Instant> {
        self.confirms.lock().unwrap().last().copied()
    }

    /// The first confirm after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.confirms
            .lock()
            .unwrap()
            .iter()
            .find(|c| **c > t)
            .copied()
    }

    fn failed(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Stop and return every confirm's moment (or the loop's error).
    fn finish(mut self) -> anyhow::Result<Vec<Instant>> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("joined once");
        thread.join().expect("the publisher thread panicked")?;
        Ok(std::mem::take(&mut *self.confirms.lock().unwrap()))
    }
}

impl Drop for PublishLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The longest gap between consecutive confirms whose later one falls in `(from, to]` (ms).
fn longest_gap(confirms: &[Instant], from: Instant, to: Instant) -> f64 {
    confirms
        .windows(2)
        .filter(|w| w[1] > from && w[1] <= to)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max)
}

/// Take what the worker reported so far.
fn take(records: &mut mpsc::UnboundedReceiver<Record>, into: &mut Vec<Record>) {
    while let Ok(r) = records.try_recv() {
        into.push(r);
    }
}

/// Poll `check` every millisecond until it holds, or fail naming `what` after [`BACK_WITHIN`].
fn wait_until(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let start = Instant::now();
    while !check()? {
        anyhow::ensure!(
            start.elapsed() < BACK_WITHIN,
            "{what}: not within {BACK_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn failover(cluster: &Cluster, urls: &[String], p: &Params) -> anyhow::Result<Vec<String>> {
    // The bench's own client connections must go on answering heartbeats while the main thread
    // waits in blocking code: a runtime with a thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let consumer = rafty_queue::Broker::new(urls.to_vec())?;
    let (tx, mut records) = mpsc::unbounded_channel();
    let worker = spawn_worker_on(
        consumer.clone(),
        BenchProcessor {
            worker: 0,
            cost: JOB_COST,
            fail_attempts: 0,
            records: tx,
        },
        None,
    );
    let mut seen: Vec<Record> = Vec::new();
    let mut failovers = Vec::new();
    let mut pauses = Vec::new();
    let mut quiet = Vec::new();
    let mut restarts = Vec::new();
    let mut on_leader = 0;
    for kill in 0..p.kills {
        // Where the worker is now; the bench's client sits on another node, one that stays up.
        let node = node_of(cluster, &consumer.current())?;
        let other = (node + 2) % cluster.len();
        let client = rt.block_on(Client::open(&urls[other]))?;
        let jobs = (0..BACKLOG)
            .map(|i| job(format!("cluster-backlog-{kill}-{i}")))
            .collect();
        rt.block_on(client.fill(RIP_EXCHANGE, DVD_KEY, jobs))?;
        let filled = Instant::now();
        wait_until("the worker to take the backlog", || {
            take(&mut records, &mut seen);
            Ok(seen.last().is_some_and(|r| r.start > filled))
        })?;
        anyhow::ensure!(
            node_of(cluster, &consumer.current())? == node,
            "the worker moved off node {node} without a kill"
        );
        let leader = if p.ask_leader {
            let members = cluster.queue_members(other, "/");
            members
                .iter()
                .find(|(name, _, _)| name == WORK_QUEUE)
                .map(|(_, _, leader)| *leader == cluster.node_name(node))
        } else {
            None
        };
        if leader == Some(true) {
            on_leader += 1;
        }

        // The publisher on the same node.
        let on = rafty_queue::Broker::new(urls.to_vec())?;
        while node_of(cluster, &on.current())? != node {
            on.lost();
        }
        let publisher = PublishLoop::spawn(on.clone());
        wait_until("the publisher's first confirm", || {
            anyhow::ensure!(!publisher.failed(), "the publisher stopped");
            Ok(publisher.confirmed() > 0)
        })?;
        std::thread::sleep(BEFORE);
        anyhow::ensure!(
            node_of(cluster, &on.current())? == node,
            "the publisher is not on node {node}"
        );

        let (at, wall) = (Instant::now(), SystemTime::now());
        let signalled = cluster.kill(node);
        let killed = at + signalled.duration_since(wall).unwrap_or_default();
        let mut back = None;
        wait_until("the worker consuming again after the kill", || {
            take(&mut records, &mut seen);
            back = seen.iter().map(|r| r.start).find(|s| *s > killed);
            Ok(back.is_some())
        })?;
        let back = back.expect("found");
        wait_until("the publisher confirmed again after the kill", || {
            anyhow::ensure!(!publisher.failed(), "the publisher stopped after the kill");
            Ok(match (publisher.first_after(killed), publisher.last()) {
                (Some(first), Some(last)) => last.duration_since(first) >= AFTER,
                _ => false,
            })
        })?;
        let confirms = publisher.finish()?;
        let end = *confirms.last().expect("confirms");
        let failover = back.duration_since(killed).as_secs_f64() * 1000.0;
        let pause = longest_gap(&confirms, killed, end);
        let before = longest_gap(&confirms, killed - BEFORE, killed);
        let to = node_of(cluster, &consumer.current())?;
        let left = rt.block_on(client.purge(WORK_QUEUE))?;
        rt.block_on(client.close());
        anyhow::ensure!(
            left > 0,
            "the backlog ran out before the worker came back: the fail-over figure would include waiting for a publish"
        );
        eprintln!(
            "rafty-bench: cluster kill {}/{}: node {node}{} killed; the worker consumed again through node {to} after {failover:.0} ms; the publisher's longest gap {pause:.0} ms (before the kill {before:.1} ms); {left} jobs left queued",
            kill + 1,
            p.kills,
            match leader {
                Some(true) => " (the work queue's leader)",
                Some(false) => " (not the work queue's leader)",
                None => "",
            }
        );
        failovers.push(failover);
        pauses.push(pause);
        quiet.push(before);
        if kill + 1 < p.kills {
            let t0 = Instant::now();
            cluster.restart(node);
            restarts.push(t0.elapsed().as_secs_f64());
        }
    }
    rt.block_on(worker.stop())?;
    if !restarts.is_empty() {
        let r = Spread::of(&restarts);
        eprintln!(
            "rafty-bench: cluster: a killed node restarted and every queue caught up in {} s",
            r.show(1)
        );
    }
    let k = p.kills;
    let (p50, p99) = (
        percentile(&mut failovers.clone(), 50.0),
        percentile(&mut failovers.clone(), 99.0),
    );
    let (pause, quiet) = (Spread::of(&pauses), Spread::of(&quiet));
    let leaders = if p.ask_leader {
        format!(", the work queue's leader in {on_leader}")
    } else {
        String::new()
    };
    Ok(vec![
        format!(
            "| cluster fail-over: SIGKILL of the worker's node → its next job start through another node, p50 of {k} kills{leaders} (ms) | {p50:.0} | | | | |"
        ),
        format!(
            "| cluster fail-over: the same, p99 of {k} kills (ms) | {p99:.0} | target {FAILOVER_TARGET_MS:.0} (tests/cluster.rs asserts only a 15 s liveness bound) | {:.2}× | ≤ 1.00× | {} |",
            p99 / FAILOVER_TARGET_MS,
            verdict(p99 <= FAILOVER_TARGET_MS)
        ),
        format!(
            "| cluster fail-over: a `Publisher::connect` publisher on the killed node, longest gap between confirms, {k} kills (ms) | {} | the {} ms before each kill {} | {:.0}× | | |",
            pause.show(0),
            BEFORE.as_millis(),
            quiet.show(1),
            pause.median / quiet.median
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::longest_gap;
    use std::time::{Duration, Instant};

    #[test]
    fn the_longest_gap_counts_the_gap_that_ends_in_the_window() {
        let t = Instant::now();
        let ms = |m| t + Duration::from_millis(m);
        let confirms = [ms(0), ms(10), ms(15), ms(400), ms(405)];
        // The gap 15 → 400 spans the window's start: it counts.
        assert_eq!(longest_gap(&confirms, ms(100), ms(405)), 385.0);
        assert_eq!(longest_gap(&confirms, ms(0), ms(15)), 10.0);
        assert_eq!(longest_gap(&confirms, ms(500), ms(600)), 0.0);
    }
}
