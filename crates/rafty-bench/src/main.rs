//! `rafty-bench`: Rafty's benchmarks, each figure next to its baseline measured in the same run
//! (median (min–max) over repetitions, ratio of medians, target, met or missed), printed as a
//! Markdown table and optionally written to docs/benchmarks.md (`--write`). Groups (`--only GROUP`):
//!
//! - `worker`: one job through `transcoded` (publish → `done` event: scan, encode, verify, fsync,
//!   rename, sidecar, confirmed event) vs the same HandBrakeCLI argv run directly on the same ISO with
//!   the same preset. Wall and CPU, medians over repetitions after a warm-up. Target ≤ 1.03×. Idle RSS
//!   of `transcoded` connected to a broker. Target ≤ 20 MiB.
//! - `rip`: `rip` vs `dd` and `ddrescue` on a loop device ([`rip`]). Targets ≥ 0.95× `dd bs=1M`,
//!   peak RSS ≤ 32 MiB.
//! - `dispatch`: jobs/s and submit → start latency of the product's worker loop with a trivial
//!   bench-only processor vs a minimal lapin consume-ack loop; publish rate of the library publisher vs
//!   raw lapin, one confirm per job ([`dispatch`]). Targets ≥ 0.8× the lapin loop, p99 ≤ 20 ms. Two
//!   diagnosis rows say where the time goes (a lapin loop confirming an event before each ack; the
//!   product's loop with a durable queue bound to its `done` events).
//! - `scaling`: 1, 2 and 4 workers draining jobs of a fixed cost vs the ideal N × 1/cost
//!   ([`scaling`]). Target ≥ 0.9× ideal at 4.
//! - `cluster`: a three-node RabbitMQ cluster on this machine vs the bench's one node: dispatch and
//!   publish rates (the price of replication); fail-over of the product's worker loop and of a
//!   `Publisher::connect` publisher when their node is SIGKILLed, repeatedly ([`cluster`]). Target:
//!   the worker consuming again within 2 s (p99).
//! - `failures`: retryable failure → redelivery vs the rung's TTL, permanent failure → dead-letter
//!   queue, each vs minimal lapin loops making the same hop on the same broker ([`failures`]).
//! - `dashboard`: `raftyctl dashboard` with a 10 000-job history under 20 simulated workers at one
//!   progress event a second: event → SSE client latency (target p99 ≤ 250 ms), RSS (≤ 32 MiB),
//!   CPU, and the first render of the history in headless chromium (≤ 300 ms) ([`dashboard`]).
//! - `split`: one title split by chapters across two `transcoded` pinned to a core each vs one
//!   pinned worker encoding it whole: submit → the join's `done` (target ≥ 1.8× sooner), frames
//!   gained or lost (target 0), the stages, and the same unpinned ([`split`]).
//!
//! It starts its own private RabbitMQ node and builds its own DVD-Video ISO (rafty-testkit); each
//! group that uses the broker gets a fresh vhost, so its queues start empty. `--quick` is CI's short
//! run: it proves the benchmark works, its figures are not meaningful.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use rafty_core::job::{Origin, Source};
use rafty_core::names::{JOB_TYPE, RIP_EXCHANGE};
use rafty_core::{Job, Media};
use rafty_handbrake::{EncodeRequest, HandBrake};
use rafty_testkit::{Broker, Env, fixture_iso};

mod cluster;
mod dashboard;
mod dispatch;
mod failures;
mod fleet;
mod replicate;
mod rip;
mod scaling;
mod split;
mod store;

/// Rafty's benchmarks.
#[derive(Debug, Parser)]
struct Cli {
    /// Short run for CI (a 20 s title, 300 dispatched jobs, one repetition each): proves the
    /// benchmark works, not the figures
    #[arg(long)]
    quick: bool,
    /// Write the results as Markdown to this file (e.g. docs/benchmarks.md)
    #[arg(long, value_name = "FILE")]
    write: Option<std::path::PathBuf>,
    /// Run only one group: `worker` (transcoded vs HandBrakeCLI, idle memory), `rip` (rip vs dd),
    /// `dispatch` (worker loop vs a lapin loop: jobs/s, latency, publish rate), `scaling` (1, 2, 4
    /// workers vs ideal), `failures` (retry redelivery vs TTL, time to dead letter), `store`
    /// (transfers to and from rafty-store vs curl, a cut, a fetching worker vs a local one) or
    /// `replicate` (replication lag, a copy vs cp, the audit vs sha256sum) or `cluster` (three nodes
    /// vs one: rates; fail-over when a node is killed) or `dashboard` (event → browser latency,
    /// memory and CPU under 20 workers, first render of a 10 000-job history) or `split` (a title
    /// split by chapters across two workers vs one worker encoding it whole)
    #[arg(long, value_name = "GROUP")]
    only: Option<String>,
}

const PRESET: &str = "Very Fast 480p30";

/// The groups, in the order they run.
const GROUPS: [&str; 10] = [
    "worker",
    "rip",
    "dispatch",
    "scaling",
    "failures",
    "store",
    "replicate",
    "cluster",
    "dashboard",
    "split",
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// CPU seconds of a process and its waited-for children, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14-17 of stat (utime, stime, cutime, cstime) are 11-14 after the comm.
    let ticks: f64 = f[11..15]
        .iter()
        .map(|x| x.parse::<f64>().expect("ticks"))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("rss field")
}

fn children_cpu() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(only) = &cli.only {
        anyhow::ensure!(
            GROUPS.contains(&only.as_str()),
            "unknown group {only:?}: --only takes one of {}",
            GROUPS.join(", ")
        );
    }
    let wants = |group: &str| cli.only.as_deref().is_none_or(|only| only == group);
    let (title_secs, warmup, reps) = if cli.quick { (20, 0, 1) } else { (180, 1, 5) };
    let dispatch_params = dispatch::Params::new(cli.quick);
    let scaling_params = scaling::Params::new(cli.quick);
    let failures_params = failures::Params::new(cli.quick);
    let store_params = store::Params::new(cli.quick);
    let replicate_params = replicate::Params::new(cli.quick);
    let cluster_params = cluster::Params::new(cli.quick);
    let dashboard_params = dashboard::Params::new(cli.quick);
    let split_params = split::Params::new(cli.quick);
    eprintln!(
        "rafty-bench: {} mode: {title_secs} s title, {warmup} warm-up, {reps} repetitions",
        if cli.quick { "quick" } else { "full" }
    );
    let load_before = loadavg();

    let broker = Broker::start();
    let mut rows = Vec::new();
    if wants("worker") || wants("rip") {
        let env = Env::new(&broker, "bench");
        if wants("worker") {
            rows.extend(worker_rows(&env, title_secs, warmup, reps)?);
        }
        if wants("rip") {
            let rip_mib = if cli.quick { 64 } else { 1024 };
            rows.extend(rip::bench(&env, rip_mib, if cli.quick { 1 } else { 7 })?);
        }
    }
    let timed = |group: &str, rows: anyhow::Result<Vec<String>>, t0: Instant| {
        eprintln!(
            "rafty-bench: {group} took {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        rows
    };
    if wants("dispatch") {
        let t0 = Instant::now();
        rows.extend(timed(
            "dispatch",
            dispatch::bench(&broker, &dispatch_params),
            t0,
        )?);
    }
    if wants("scaling") {
        let t0 = Instant::now();
        rows.extend(timed(
            "scaling",
            scaling::bench(&broker, &scaling_params),
            t0,
        )?);
    }
    if wants("failures") {
        let t0 = Instant::now();
        rows.extend(timed(
            "failures",
            failures::bench(&broker, &failures_params),
            t0,
        )?);
    }
    if wants("store") {
        let t0 = Instant::now();
        let env = Env::new(&broker, "bench-store");
        rows.extend(timed("store", store::bench(&env, &store_params), t0)?);
    }
    if wants("replicate") {
        let t0 = Instant::now();
        let env = Env::new(&broker, "bench-replicate");
        rows.extend(timed(
            "replicate",
            replicate::bench(&env, &replicate_params),
            t0,
        )?);
    }
    if wants("cluster") {
        let t0 = Instant::now();
        rows.extend(timed(
            "cluster",
            cluster::bench(&broker, &cluster_params),
            t0,
        )?);
    }
    if wants("dashboard") {
        let t0 = Instant::now();
        let env = Env::new(&broker, "bench-dashboard");
        rows.extend(timed(
            "dashboard",
            dashboard::bench(&env, &dashboard_params),
            t0,
        )?);
    }
    if wants("split") {
        let t0 = Instant::now();
        rows.extend(timed("split", split::bench(&broker, &split_params), t0)?);
    }
    let load_after = loadavg();
    let header = "| figure: median (min–max) | Rafty | baseline | ratio of medians | target | |\n|---|---|---|---|---|---|";
    let machine = format!(
        "{} cores, {} MiB memory; {}; {}; rustc {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0)
            / 1024,
        version("HandBrakeCLI", &["--version"]),
        broker_version(&broker),
        version("rustc", &["--version"]).trim_start_matches("rustc "),
    );
    let load = format!("load average {load_before} before the run, {load_after} after it");
    let table = format!("{header}\n{}", rows.join("\n"));
    println!("\nmachine: {machine}; {load}");
    println!(
        "title: {title_secs} s NTSC DVD title, preset \"{PRESET}\", median of {reps} after {warmup} warm-up"
    );
    println!("dispatch: {}", dispatch_params.describe());
    println!("scaling: {}", scaling_params.describe());
    println!("failures: {}", failures_params.describe());
    println!("store: {}", store_params.describe());
    println!("replicate: {}", replicate_params.describe());
    println!("cluster: {}", cluster_params.describe());
    println!("dashboard: {}", dashboard_params.describe());
    println!("split: {}\n", split_params.describe());
    println!("{table}");
    if let Some(path) = &cli.write {
        let workloads = Workloads {
            title: title_secs,
            warmup,
            reps,
            dispatch: dispatch_params.describe(),
            scaling: scaling_params.describe(),
            failures: failures_params.describe(),
            store: store_params.describe(),
            replicate: replicate_params.describe(),
            cluster: cluster_params.describe(),
        };
        write_doc(path, &machine, &load, &workloads, &table)?;
        eprintln!("rafty-bench: wrote {}", path.display());
    }
    Ok(())
}

/// The 1-minute load average, to show whether something else ran on the machine.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The worker group: one job through `transcoded` vs HandBrakeCLI alone, and idle memory.
fn worker_rows(
    env: &Env,
    title_secs: u32,
    warmup: usize,
    reps: usize,
) -> anyhow::Result<Vec<String>> {
    let iso = env.add_iso(&fixture_iso("BENCH", &[title_secs]), "bench.iso");
    let handbrake = HandBrake::new("HandBrakeCLI".into(), vec![], None, 1);
    let amqp = env.amqp();

    // Baseline: the same argv the worker uses, run directly.
    let mut direct_wall = Vec::new();
    let mut direct_cpu = Vec::new();
    for i in 0..warmup + reps {
        let out = env.path().join(format!("direct-{i}.mkv"));
        let args = handbrake.encode_args(&EncodeRequest {
            input: &iso,
            title: 1,
            output: &out,
            preset: PRESET,
            format: "av_mkv",
            // What a worker with the default config passes (chapter markers on).
            tracks: &rafty_handbrake::Tracks {
                chapter_markers: Some(true),
                ..Default::default()
            },
            extra: &[],
        });
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let status = Command::new("HandBrakeCLI").args(&args).output()?.status;
        let wall = t0.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "HandBrakeCLI failed: {status}");
        if i >= warmup {
            direct_wall.push(wall);
            direct_cpu.push(children_cpu() - cpu0);
        }
        let _ = std::fs::remove_file(&out);
    }

    // Through the worker: a long-running transcoded, jobs published as any client would.
    let mut worker = env.worker(&env.config(), &[]);
    worker.wait_log("waiting for jobs", Duration::from_secs(60));
    let pid = worker.pid();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid, "VmRSS:");
    let tap = amqp.tap();
    let mut worker_wall = Vec::new();
    let mut worker_cpu = Vec::new();
    for i in 0..warmup + reps {
        let job = Job::new(
            Source {
                path: iso.clone(),
                media: Media::Dvd,
                size: None,
                sha256: None,
                label: None,
                unreadable_sectors: None,
                url: None,
            },
            format!("through-{i}"),
            Origin::default(),
        );
        let body = serde_json::to_vec(&job)?;
        let props = rafty_testkit::job_properties(&job.id.to_string(), JOB_TYPE);
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        amqp.publish(RIP_EXCHANGE, "rafty.rip.iso.dvd", &body, props);
        let id = job.id.to_string();
        amqp.wait_event(&tap, "done", Duration::from_secs(1800), |v| {
            v["id"] == id.as_str()
        });
        let wall = t0.elapsed().as_secs_f64();
        if i >= warmup {
            worker_wall.push(wall);
            worker_cpu.push(cpu_secs(pid) - cpu0);
        }
        let out = env.media_dir.join(format!("through-{i}.mkv"));
        anyhow::ensure!(out.exists(), "{} missing", out.display());
    }
    let busy_hwm = rss_kib(pid, "VmHWM:");
    drop(worker);

    let spread = |v: &[f64]| format!("({:.2}–{:.2})", v[0], v[v.len() - 1]);
    let dw = median(&mut direct_wall);
    let ww = median(&mut worker_wall);
    let dc = median(&mut direct_cpu);
    let wc = median(&mut worker_cpu);
    let (dws, wws, dcs, wcs) = (
        spread(&direct_wall),
        spread(&worker_wall),
        spread(&direct_cpu),
        spread(&worker_cpu),
    );
    let idle_mib = idle_rss as f64 / 1024.0;
    Ok(vec![
        format!(
            "| one job, wall (s) | {ww:.2} {wws} | HandBrakeCLI alone {dw:.2} {dws} | {:.3}× | ≤ 1.03× | {} |",
            ww / dw,
            verdict(ww / dw <= 1.03)
        ),
        format!(
            "| one job, CPU (s) | {wc:.2} {wcs} | HandBrakeCLI alone {dc:.2} {dcs} | {:.3}× | ≤ 1.03× | {} |",
            wc / dc,
            verdict(wc / dc <= 1.03)
        ),
        format!(
            "| transcoded idle RSS (MiB) | {idle_mib:.1} | target 20 | {:.2}× | ≤ 1.00× | {} |",
            idle_mib / 20.0,
            verdict(idle_mib <= 20.0)
        ),
        format!(
            "| transcoded peak RSS during jobs (MiB) | {:.1} | (HandBrake's own memory not included) | | | |",
            busy_hwm as f64 / 1024.0
        ),
    ])
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn broker_version(broker: &Broker) -> String {
    let v = broker.ctl(&["version"]);
    format!("RabbitMQ {}", v.trim())
}

/// What each group ran, for the page.
struct Workloads {
    title: u32,
    warmup: usize,
    reps: usize,
    dispatch: String,
    scaling: String,
    failures: String,
    store: String,
    replicate: String,
    cluster: String,
}

fn write_doc(
    path: &Path,
    machine: &str,
    load: &str,
    w: &Workloads,
    table: &str,
) -> anyhow::Result<()> {
    let Workloads {
        title,
        warmup,
        reps,
        dispatch,
        scaling,
        failures,
        store,
        replicate,
        cluster,
    } = w;
    let text = format!(
        "# Benchmarks\n\n\
         Regenerate with `scripts/bench --write docs/benchmarks.md` (a private RabbitMQ node, a three-node\n\
         cluster and a fixture ISO are made by the command; nothing else needs to run; about 7 minutes here,\n\
         plus a few for the cluster group's node restarts). CI runs `scripts/bench --quick`\n\
         so the benchmark cannot rot; its figures are not meaningful. `--only GROUP` runs one group: `worker`,\n\
         `rip`, `dispatch`, `scaling`, `failures`, `store`, `replicate` or `cluster`.\n\n\
         Machine: {machine}; {load}.\n\n\
         {table}\n\n\
         ## How each figure is measured\n\n\
         Every figure stands next to a baseline measured in the same run; each group that uses the broker\n\
         gets a fresh vhost, so its queues start empty.\n\n\
         Worker: one {title} s NTSC DVD-Video title, preset \"{PRESET}\", median of {reps} runs after {warmup} warm-up.\n\
         \"Through transcoded\" is measured from publishing the job to receiving its `done` event, so it\n\
         includes the scan of the source, the verification scan of the output, fsync, rename, the sidecar\n\
         and the confirmed event; the baseline is the identical HandBrakeCLI argv run directly.\n\n\
         Rip: `rip` copying a loop device (a file of real data, page cache warm) to an image on the\n\
         same file system, against `dd bs=1M conv=fsync`, `dd bs=2048 conv=fsync` and `ddrescue` + `sync`\n\
         doing the same; rip also fingerprints the disc, keeps its map, hashes SHA-256 and publishes a job.\n\n\
         Dispatch. Rafty: the product's worker loop (`rafty_queue::run`: prefetch 1,\n\
         decode, process, confirmed `done` event, ack) with a bench-only processor that returns at once, on\n\
         the real topology. Baseline: a minimal lapin loop (prefetch 1, consume, ack) on a quorum queue\n\
         declared with the work queue's arguments, on the same broker. The sides take turns in batches, so\n\
         that other work on the machine weighs on both alike. Throughput: each batch is queued at full\n\
         speed, then drained by one consumer (first start to last start). Latency: both consumers idle; jobs\n\
         are submitted one at a time, each side in turn, each after the previous job started and a 3 ms\n\
         pause; a job's latency is its start minus the `created_at` stamped just before it was published.\n\
         Publish rate: the library publisher (`Publisher::publish_job`, one confirm awaited per job, as\n\
         `raftyctl submit` does) vs raw lapin publishing the same bodies and properties with one confirm\n\
         each. The two diagnosis rows are not targets: the lapin loop again, also publishing an event and\n\
         awaiting its confirm before each ack, as the product's protocol requires; and the product's loop\n\
         with a durable quorum queue bound to `rafty.transcode.done`, as `rafty-notify` declares one. Sizes:\n\
         {dispatch}.\n\n\
         Scaling. 1, 2 and 4 product worker loops, each on its own thread with its own\n\
         connection and runtime (as separate `transcoded` processes), wait on the empty work queue; the jobs\n\
         are then queued at full speed, and the figure is the jobs divided by the time from the first job's\n\
         start to the last job's end. A job's cost is a sleep in the bench processor (this machine has 2\n\
         cores), so the ideal is exactly N × 1/cost; the timer's own overshoot (about 1 ms a job) counts\n\
         against the workers. Sizes: {scaling}.\n\n\
         Failures, ladder [\"1s\", \"2s\"]. The bench processor fails a `retry` job as\n\
         `SourceUnavailable` (retryable) on its first attempts and a `dead` job as `BadMessage` (permanent).\n\
         Redelivery: the next attempt's start minus the moment the failure was returned (copy to the rung,\n\
         confirm, ack, TTL, the broker's dead-lettering back to the work queue, delivery). Dead letter: the\n\
         failure's return to the job's delivery to a consumer of `rafty.transcode.dead`. Baselines: minimal\n\
         lapin loops doing the same hop on queues declared like the product's (consume; publish a copy with a\n\
         confirm to a TTL queue like the rung, or to a fanout exchange bound to a quorum queue; ack; a second\n\
         loop consumes where the copy lands). Sizes: {failures}.\n\n\
         Store (workers without shared storage). The real `rafty-store` on loopback; Rafty's client\n\
         (streamed SHA-256, fsync) against `curl` from the same store (then an fsync of its file), in turns;\n\
         uploads: Rafty's offer, PATCH and commit against curl making the same three requests. A cut: a TCP\n\
         proxy drops the first connection after 40 % of the image; the client resumes with `Range`/`If-Range`;\n\
         bytes received twice are counted by the client, bytes sent twice from the store's `image served`\n\
         log (these include what the kernel's socket buffers held when the connection died, which no resume\n\
         can save). One job through a worker that fetches the image and sends the output back, against the\n\
         same job on a worker that reads the image where it is; the allowance is 1.05 × local plus the\n\
         transfer of the image and the output at the rates measured above. Sizes: {store}.\n\n\
         Replicate (docs/replicate.md). The real `rafty-replicate` with one directory destination on this\n\
         machine's disk. Lag: a video and its sidecar are put in the library as a worker does and its `done`\n\
         event published; the figure is the time until its copy appears at the destination, which is the\n\
         moment it was verified (a copy takes its name only after it read back right), one video at a time.\n\
         Copy: one large object from its event to its verified copy (hashed on the way, fsynced, read back,\n\
         renamed) against `cp` + `sync FILE` of the same file; both read a warm page cache. Audit: `raftyctl\n\
         audit --dest library` (every video and sidecar read whole and hashed, the ledger updated) against\n\
         `sha256sum` over the same files, in turns. Sizes: {replicate}.\n\n\
         Cluster (docs/cluster.md). Three RabbitMQ nodes on this machine, started once for the group by the\n\
         test kit from the shipped config/rabbitmq-cluster.conf. Rates: the publish rate and the dispatch\n\
         rate measured as above (library publisher, one confirm per job; the product's loop draining a\n\
         queued batch), on the cluster used through one node and on the bench's one node, in turns; the\n\
         ratio is the price of replication (each quorum-queue commit waits for a second node). Fail-over:\n\
         the product's worker loop, connected through a `Broker` holding the three nodes' URLs, consumes a\n\
         backlog (each job costs a few milliseconds) while a `Publisher::connect` publisher on the same node\n\
         publishes one confirm at a time; that node is SIGKILLed. The figures are the time from the signal\n\
         to the worker's next job start through another node, and the publisher's longest gap between two\n\
         confirms across the kill, next to its longest gap in the moment before it. The node is restarted on\n\
         its data, and every queue caught up, before the next kill; on 3 nodes of one 2-core machine the\n\
         figures include the machine's contention. p99 of a few kills is their maximum. Sizes: {cluster}.\n\n\
         ## Reading the figures\n\n\
         The worker's overhead is nearly constant per job: two HandBrake scans (the source, to pick the\n\
         title and learn its length; the output, to verify it) of ~0.3 s each, plus milliseconds of broker\n\
         round trips and fsyncs. On this short title that is several percent of the wall time; on a\n\
         feature-length title, whose encode takes minutes, the same ~0.7 s is a fraction of a percent\n\
         (an extrapolation, not measured here). The CPU ratio shows the scans cost little CPU.\n\n\
         rip's throughput here is bounded by SHA-256, computed on a second thread while copying (~2 GB/s\n\
         with SHA-NI); a real drive reads 10-70 MB/s, so neither rip nor the hash is ever the bottleneck\n\
         with a disc. The dd figures vary a lot between runs on this machine (0.4-1.2 s for the same\n\
         1 GiB copy into memory), hence min–max next to each median.\n\n\
         Dispatch: the product's loop takes fewer trivial jobs per second than the bare lapin loop because of\n\
         what the protocol asks of it, not because of its own code. It publishes the `done` event and waits\n\
         for the broker's confirm before it acks, so each job costs two trips through the broker instead of\n\
         one, and with prefetch 1 the next job leaves the broker only once the ack has arrived. The first\n\
         diagnosis row shows it: a lapin loop doing the same confirmed publish before each ack is about as\n\
         fast as the product's loop; the few percent left are the loop's own work (decoding the job, the\n\
         `done` event's JSON, the tracing span; the bench installs no log subscriber, so `transcoded`'s log\n\
         lines are not counted). The second shows\n\
         what a listener adds: with a durable quorum queue bound to the `done` events (rafty-notify's), every\n\
         confirm waits for that queue's commit. Meeting 0.8× would mean acking before the event is confirmed\n\
         (giving up the guarantee that every finished job is announced) or taking the next job ahead\n\
         (prefetch 2, which parks a job behind a busy worker's encode); for a fraction of a millisecond to a\n\
         millisecond per job, against encodes of minutes, neither is worth it.\n\
         An idle worker starts a submitted job within about half a millisecond, as the lapin loop does, and\n\
         the library publisher costs nothing over raw lapin: both wait for one confirm, that is one\n\
         quorum-queue commit, per job.\n\n\
         Scaling: the fleet loses the same small share of the ideal with 1, 2 or 4 workers, so adding workers\n\
         adds throughput linearly. The loss is per job: about 1 ms of timer overshoot in the bench's sleep and\n\
         about 1 ms from one job's end to the same worker's next start (confirmed `done` event, ack, next\n\
         delivery); the broker hands the jobs out evenly (the bench's log shows how many each worker took).\n\n\
         Failures: a retried job comes back within a few milliseconds of its rung's TTL, exactly as when\n\
         lapin alone makes the same hop, so the ladder is as accurate as RabbitMQ's TTL; a permanently failed\n\
         job can be taken from the dead-letter queue about a millisecond or less after the failure, again like\n\
         lapin alone.\n\n\
         Other work on the machine makes every figure noisier (the load averages on the machine line say\n\
         how busy it was); the dispatch sides take turns in batches so that both see the same conditions.\n"
    );
    std::fs::write(path, text)?;
    Ok(())
}
