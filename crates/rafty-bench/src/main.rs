//! `rafty-bench`: measures what the worker costs on top of HandBrakeCLI, each figure next to its
//! baseline in the same run, and optionally writes the table to docs/benchmarks.md.
//!
//! - Worker overhead: one job through `transcoded` (publish → `done` event: scan, encode, verify,
//!   fsync, rename, sidecar, confirmed event) vs the same HandBrakeCLI argv run directly on the same
//!   ISO with the same preset. Wall and CPU, medians over repetitions after a warm-up. Target ≤ 1.03×.
//! - Idle RSS of `transcoded` connected to a broker. Target ≤ 20 MiB.
//!
//! It starts its own private RabbitMQ node and builds its own DVD-Video ISO (rafty-testkit).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use rafty_core::job::{Origin, Source};
use rafty_core::names::{JOB_TYPE, RIP_EXCHANGE};
use rafty_core::{Job, Media};
use rafty_handbrake::{EncodeRequest, HandBrake};
use rafty_testkit::{Broker, Env, fixture_iso};

mod rip;

/// Rafty's benchmarks.
#[derive(Debug, Parser)]
struct Cli {
    /// Short run for CI (a 20 s title, one repetition): proves the benchmark works, not the figures
    #[arg(long)]
    quick: bool,
    /// Write the results as Markdown to this file (e.g. docs/benchmarks.md)
    #[arg(long, value_name = "FILE")]
    write: Option<std::path::PathBuf>,
    /// Run only one group: `worker` (transcoded vs HandBrakeCLI, idle memory) or `rip` (rip vs dd)
    #[arg(long, value_name = "GROUP")]
    only: Option<String>,
}

const PRESET: &str = "Very Fast 480p30";

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
    let (title_secs, warmup, reps) = if cli.quick { (20, 0, 1) } else { (180, 1, 5) };
    eprintln!(
        "rafty-bench: {} mode: {title_secs} s title, {warmup} warm-up, {reps} repetitions",
        if cli.quick { "quick" } else { "full" }
    );

    let broker = Broker::start();
    let env = Env::new(&broker, "bench");
    let mut rows = Vec::new();
    if cli.only.as_deref() != Some("rip") {
        rows.extend(worker_rows(&env, title_secs, warmup, reps)?);
    }
    if cli.only.as_deref() != Some("worker") {
        let rip_mib = if cli.quick { 64 } else { 1024 };
        rows.extend(rip::bench(&env, rip_mib, if cli.quick { 1 } else { 7 })?);
    }
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
    let table = format!("{header}\n{}", rows.join("\n"));
    println!("\nmachine: {machine}");
    println!(
        "title: {title_secs} s NTSC DVD title, preset \"{PRESET}\", median of {reps} after {warmup} warm-up\n"
    );
    println!("{table}");
    if let Some(path) = &cli.write {
        write_doc(path, &machine, title_secs, warmup, reps, &table)?;
        eprintln!("rafty-bench: wrote {}", path.display());
    }
    Ok(())
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

fn write_doc(
    path: &Path,
    machine: &str,
    title: u32,
    warmup: usize,
    reps: usize,
    table: &str,
) -> anyhow::Result<()> {
    let text = format!(
        "# Benchmarks\n\n\
         Regenerate with `scripts/bench --write docs/benchmarks.md` (a private RabbitMQ node and a fixture ISO\n\
         are made by the command; nothing else needs to run). CI runs `scripts/bench --quick` so the\n\
         benchmark cannot rot; its figures are not meaningful.\n\n\
         Machine: {machine}.\n\n\
         Workload: one {title} s NTSC DVD-Video title, preset \"{PRESET}\", median of {reps} runs after {warmup} warm-up.\n\
         \"Through transcoded\" is measured from publishing the job to receiving its `done` event, so it\n\
         includes the scan of the source, the verification scan of the output, fsync, rename, the sidecar\n\
         and the confirmed event; the baseline is the identical HandBrakeCLI argv run directly.\n\n\
         {table}\n\n\
         Rip: `rip` copying a loop device (a file of real data, page cache warm) to an image on the\n\
         same file system, against `dd bs=1M conv=fsync`, `dd bs=2048 conv=fsync` and `ddrescue` + `sync`\n\
         doing the same; rip also fingerprints the disc, keeps its map, hashes SHA-256 and publishes a job.\n\n\
         ## Reading the figures\n\n\
         The worker's overhead is nearly constant per job: two HandBrake scans (the source, to pick the\n\
         title and learn its length; the output, to verify it) of ~0.3 s each, plus milliseconds of broker\n\
         round trips and fsyncs. On this short title that is several percent of the wall time; on a\n\
         feature-length title, whose encode takes minutes, the same ~0.7 s is a fraction of a percent\n\
         (an extrapolation, not measured here). The CPU ratio shows the scans cost little CPU.\n\n\
         rip's throughput here is bounded by SHA-256, computed on a second thread while copying (~2 GB/s\n\
         with SHA-NI); a real drive reads 10-70 MB/s, so neither rip nor the hash is ever the bottleneck\n\
         with a disc. The dd figures vary a lot between runs on this machine (0.4-1.2 s for the same\n\
         1 GiB copy into memory), hence min–max next to each median.\n"
    );
    std::fs::write(path, text)?;
    Ok(())
}
