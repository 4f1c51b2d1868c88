//! Split group: one title cut by chapters across two workers (`encode.split = "chapters"`,
//! docs/split.md) against one worker encoding the whole title.
//!
//! The title is a DVD-Video ISO made by scripts/make-dvd-iso with equal chapters and `DVD_NOISE`
//! (film-like content, which costs x264 about what a real film does; the plain test pattern is so
//! cheap that the fixed costs would dominate). Every run gets a fresh [`Env`] (its own vhost, so
//! the workers start on empty queues and see only each other; its own media directory, so no output
//! is skipped as already done), its workers started and idle before the job is published.
//!
//! - Baseline: one `transcoded` under `taskset -c 0` (the whole process tree, HandBrake's threads
//!   included, on one core); the job without a split; publish → its `done`.
//! - Measured: two `transcoded`, under `taskset -c 0` and `taskset -c 1` (as two one-core machines),
//!   the job with `encode.split = "chapters"`; publish → the join's `done`. The split, the pieces,
//!   the tracks pass and the join are all inside that time. Target: baseline / split ≥ 1.8×.
//! - The same with both workers unpinned, against the same baseline, and (a diagnosis) one unpinned
//!   worker encoding the whole title with both cores.
//! - Frames: the joined output's video packets against the whole encode's (`ffprobe
//!   -count_packets`), in every repetition: the difference must be 0.
//! - Stages: submit → the `split` event (scan, the live-worker round, the cut); each video piece's,
//!   the tracks pass's and the join's `elapsed-secs`; the `split` event → the last piece or tracks
//!   pass done (as the bench saw the events arrive).
//!
//! - Presets (full mode): one whole run and one split run, pinned, for each of `Params::presets` on
//!   a shorter title; the fixed costs of a split do not grow with the preset's, so the gain does.
//!
//! The runs of one repetition take turns (whole pinned, split pinned, whole unpinned, split
//! unpinned), so that other work on the machine weighs on every side alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rafty_core::job::{Origin, Source, Split};
use rafty_core::names::{JOB_TYPE, RIP_EXCHANGE};
use rafty_core::wire;
use rafty_core::{Job, Media};
use rafty_testkit::{Amqp, Broker, Env, EventTap, Worker, bin, require_tools, script};
use serde_json::Value;

use crate::fleet::Spread;
use crate::verdict;

/// Sizes of a run.
pub struct Params {
    /// The title's length.
    pub title_secs: u32,
    /// Chapters, all of the same length.
    pub chapters: u32,
    /// `DVD_NOISE` of the fixture.
    pub noise: u32,
    /// Repetitions (the figures are medians).
    pub reps: usize,
    /// Other presets, each measured once, pinned, on a shorter title (`preset_title`): the fixed
    /// costs of a split (the tracks pass, the pieces' decode checks) do not grow with the preset's
    /// cost, so the gain does. Empty in quick mode.
    pub presets: Vec<&'static str>,
    /// The title of the preset runs: (seconds, chapters).
    pub preset_title: (u32, u32),
}

impl Params {
    /// Full or quick.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                title_secs: 40,
                chapters: 4,
                noise: 12,
                reps: 1,
                presets: Vec::new(),
                preset_title: (40, 4),
            }
        } else {
            Params {
                title_secs: 240,
                chapters: 8,
                noise: 12,
                reps: 3,
                // The config's default preset, and a quality preset for DVDs.
                presets: vec!["Fast 1080p30", "HQ 480p30 Surround"],
                preset_title: (120, 4),
            }
        }
    }

    /// One sentence for the page.
    pub fn describe(&self) -> String {
        format!(
            "a {} s NTSC title in {} chapters of {} s, DVD_NOISE={}, preset \"{}\", median of {} repetitions, each run in a fresh vhost and media directory",
            self.title_secs,
            self.chapters,
            self.chapter_secs(),
            self.noise,
            crate::PRESET,
            self.reps
        )
    }

    fn chapter_secs(&self) -> u32 {
        self.title_secs / self.chapters
    }

    /// `SECS@0,C,2C,...` for scripts/make-dvd-iso.
    fn title_arg(&self) -> String {
        let starts: Vec<String> = (0..self.chapters)
            .map(|i| (i * self.chapter_secs()).to_string())
            .collect();
        format!("{}@{}", self.title_secs, starts.join(","))
    }
}

/// The fixture: built once with scripts/make-dvd-iso and cached beside rafty-testkit's fixtures
/// (`target/rafty-fixtures/`).
fn split_iso(p: &Params) -> anyhow::Result<PathBuf> {
    require_tools(&["ffmpeg", "dvdauthor", "genisoimage"]);
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| rafty_testkit::workspace_root().join("target"))
        .join("rafty-fixtures");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "SPLITBENCH-{}s-{}ch-noise{}.iso",
        p.title_secs, p.chapters, p.noise
    ));
    if !path.exists() {
        let t0 = Instant::now();
        let out = Command::new(script("make-dvd-iso"))
            .arg(&path)
            .arg("SPLITBENCH")
            .arg(p.title_arg())
            .env("DVD_NOISE", p.noise.to_string())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "scripts/make-dvd-iso {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "rafty-bench: split: built {} in {:.1} s",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(path)
}

/// How a run's workers are placed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fleet {
    /// One worker, `taskset -c 0`.
    OnePinned,
    /// One worker on both cores.
    OneFree,
    /// Two workers, `taskset -c 0` and `taskset -c 1`.
    TwoPinned,
    /// Two workers, both on both cores.
    TwoFree,
}

impl Fleet {
    fn cpus(self) -> &'static [Option<&'static str>] {
        match self {
            Fleet::OnePinned => &[Some("0")],
            Fleet::OneFree => &[None],
            Fleet::TwoPinned => &[Some("0"), Some("1")],
            Fleet::TwoFree => &[None, None],
        }
    }

    fn split(self) -> bool {
        matches!(self, Fleet::TwoPinned | Fleet::TwoFree)
    }

    fn name(self) -> &'static str {
        match self {
            Fleet::OnePinned => "whole, 1 worker on core 0",
            Fleet::OneFree => "whole, 1 worker unpinned",
            Fleet::TwoPinned => "split, 2 workers on cores 0 and 1",
            Fleet::TwoFree => "split, 2 workers unpinned",
        }
    }
}

/// An event as the bench saw it arrive.
struct Seen {
    /// Seconds after the job was published.
    at: f64,
    key: String,
    body: Value,
}

/// One split step's `done`.
struct StepDone {
    at: f64,
    host: String,
    elapsed: f64,
    frames: u64,
}

/// What one run measured.
struct Run {
    /// Publish → the title's last `done` (the whole job's, or the join's).
    total: f64,
    /// CPU seconds of every worker and its children over the run.
    cpu: f64,
    /// Video frames of the output (ffprobe -count_packets).
    frames: u64,
    /// The `done`'s elapsed-secs of the whole job (whole runs only).
    elapsed: f64,
    /// Split runs only.
    split: Option<SplitRun>,
}

struct SplitRun {
    /// Publish → the `split` event.
    split_at: f64,
    /// The chapters of each video piece.
    chapters: Vec<rafty_core::job::ChapterRange>,
    pieces: Vec<StepDone>,
    tracks: StepDone,
    join: StepDone,
    /// The join's checks: (name, passed, detail).
    checks: Vec<wire::Check>,
    fallback: Option<String>,
}

/// Rows of the results table.
pub fn bench(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    require_tools(&["taskset", "ffprobe", "mkvmerge", "HandBrakeCLI"]);
    anyhow::ensure!(
        std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2,
        "the split group pins workers to cores 0 and 1: it needs two cores"
    );
    let fixture = split_iso(p)?;
    let order = [
        Fleet::OnePinned,
        Fleet::TwoPinned,
        Fleet::OneFree,
        Fleet::TwoFree,
    ];
    let mut runs: Vec<Vec<Run>> = order.iter().map(|_| Vec::new()).collect();
    for rep in 0..p.reps {
        for (i, &fleet) in order.iter().enumerate() {
            let run = one_run(broker, &fixture, fleet, None)?;
            eprintln!(
                "rafty-bench: split {}/{}: {}: {:.2} s, CPU {:.1} s, {} frames{}",
                rep + 1,
                p.reps,
                fleet.name(),
                run.total,
                run.cpu,
                run.frames,
                run.split.as_ref().map(show_stages).unwrap_or_default()
            );
            runs[i].push(run);
        }
    }
    let mut rows = rows(p, &order, &runs);
    rows.extend(preset_rows(broker, p)?);
    Ok(rows)
}

/// One whole run on core 0 and one split run on cores 0 and 1 for each of `p.presets`.
fn preset_rows(broker: &Broker, p: &Params) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    if p.presets.is_empty() {
        return Ok(rows);
    }
    let (title_secs, chapters) = p.preset_title;
    let short = Params {
        title_secs,
        chapters,
        presets: Vec::new(),
        ..*p
    };
    let fixture = split_iso(&short)?;
    for preset in &p.presets {
        let whole = one_run(broker, &fixture, Fleet::OnePinned, Some(preset))?;
        let split = one_run(broker, &fixture, Fleet::TwoPinned, Some(preset))?;
        let stages = split.split.as_ref().map(show_stages).unwrap_or_default();
        eprintln!(
            "rafty-bench: split, preset {preset:?}: whole {:.2} s ({} frames), split {:.2} s ({} frames){stages}",
            whole.total, whole.frames, split.total, split.frames
        );
        let s = split.split.as_ref().expect("a split run");
        let clean = s.fallback.is_none() && s.checks.iter().all(|c| c.passed);
        let ratio = whole.total / split.total;
        let pieces: Vec<String> = s
            .pieces
            .iter()
            .map(|d| format!("{:.1}", d.elapsed))
            .collect();
        rows.push(format!(
            "| split, preset \"{preset}\": {title_secs} s title, {chapters} chapters, 2 workers on cores 0 and 1, one run (s; pieces {}, tracks pass {:.1}, join {:.1}) | {:.2} | 1 worker on core 0, whole title {:.2} | {ratio:.2}× sooner | ≥ 1.80×, frames equal, checks pass | {} |",
            pieces.join(" and "),
            s.tracks.elapsed,
            s.join.elapsed,
            split.total,
            whole.total,
            verdict(ratio >= 1.8 && clean && split.frames == whole.frames)
        ));
    }
    Ok(rows)
}

fn show_stages(s: &SplitRun) -> String {
    let pieces: Vec<String> = s
        .pieces
        .iter()
        .zip(&s.chapters)
        .map(|(d, c)| format!("piece {c} {:.2} s on {}", d.elapsed, d.host))
        .collect();
    format!(
        "; split event at {:.2} s; {}; tracks {:.2} s on {}; join {:.2} s on {}; checks {}; fallback {}",
        s.split_at,
        pieces.join(", "),
        s.tracks.elapsed,
        s.tracks.host,
        s.join.elapsed,
        s.join.host,
        s.checks
            .iter()
            .map(|c| format!(
                "{} {} ({})",
                c.name,
                if c.passed { "passed" } else { "FAILED" },
                c.detail
            ))
            .collect::<Vec<_>>()
            .join(", "),
        s.fallback.as_deref().unwrap_or("none")
    )
}

/// One job through a fresh fleet in a fresh world.
fn one_run(
    broker: &Broker,
    fixture: &Path,
    fleet: Fleet,
    preset: Option<&str>,
) -> anyhow::Result<Run> {
    let env = Env::new(broker, "bench-split");
    let iso = env.iso_dir.join("film.iso");
    if std::fs::hard_link(fixture, &iso).is_err() {
        std::fs::copy(fixture, &iso)?;
    }
    let mut workers: Vec<Worker> = Vec::new();
    for (w, cpu) in fleet.cpus().iter().enumerate() {
        // Each worker its own host name and scratch directory, as two machines sharing the output
        // directory.
        let scratch = format!("\"{}\"", env.path().join(format!("scratch-{w}")).display());
        let config = env.write_config(
            &format!("worker-{w}.toml"),
            Some(&format!("bench-split-{w}")),
            &[("scratch-dir", scratch.as_str())],
        );
        let cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(bin("transcoded"));
                c
            }
            None => Command::new(bin("transcoded")),
        };
        workers.push(env.worker_with(cmd, &config, &[]));
    }
    for worker in &mut workers {
        worker.wait_log("waiting for jobs", Duration::from_secs(60));
    }
    let amqp = env.amqp();
    let tap = amqp.tap();
    // Let the workers settle (their first heartbeats, their control consumers).
    std::thread::sleep(Duration::from_secs(2));

    let mut job = Job::new(
        Source {
            path: iso.clone(),
            media: Media::Dvd,
            size: None,
            sha256: None,
            label: None,
            unreadable_sectors: None,
            url: None,
        },
        "film".into(),
        Origin::default(),
    );
    if fleet.split() {
        job.encode.split = Some(Split::Chapters);
    }
    job.encode.preset = preset.map(str::to_owned);
    let whole = job.id;
    let body = serde_json::to_vec(&job)?;
    let props = rafty_testkit::job_properties(&whole.to_string(), JOB_TYPE);
    let cpu0: f64 = workers.iter().map(|w| crate::cpu_secs(w.pid())).sum();
    let t0 = Instant::now();
    amqp.publish(RIP_EXCHANGE, "rafty.rip.iso.dvd", &body, props);

    let timeout = Duration::from_secs(1800);
    let is_last = |s: &Seen| {
        if s.key != "rafty.transcode.done" {
            return false;
        }
        match done_of(s) {
            Some(d) if fleet.split() => d
                .split
                .as_ref()
                .is_some_and(|x| x.whole == whole && x.step == "join"),
            Some(d) => d.id == whole,
            None => false,
        }
    };
    let stop = |s: &Seen| -> anyhow::Result<bool> {
        if fleet.split()
            && s.key == "rafty.transcode.done"
            && done_of(s).is_some_and(|d| d.id == whole && d.split.is_none())
        {
            anyhow::bail!(
                "the title was encoded whole, not split (too few live workers seen?): {}",
                s.body
            );
        }
        Ok(is_last(s))
    };
    let seen = watch(&amqp, &tap, t0, timeout, &mut workers, &stop)?;
    let last = seen
        .iter()
        .find(|s| is_last(s))
        .expect("watched until found");
    let total = last.at;
    let cpu: f64 = workers
        .iter()
        .map(|w| crate::cpu_secs(w.pid()))
        .sum::<f64>()
        - cpu0;
    let done = done_of(last).expect("a done");
    anyhow::ensure!(
        fleet.split() || done.split.is_none(),
        "a job without a split came back as a split step: {}",
        last.body
    );
    let output = done
        .outputs
        .first()
        .map(|o| {
            if o.path.is_absolute() {
                o.path.clone()
            } else {
                env.media_dir.join(&o.path)
            }
        })
        .ok_or_else(|| anyhow::anyhow!("the last done has no output: {}", last.body))?;
    let frames = count_frames(&output)?;

    let split = if fleet.split() {
        Some(split_run(&seen, whole, &done, total)?)
    } else {
        None
    };
    drop(workers);
    Ok(Run {
        total,
        cpu,
        frames,
        elapsed: done.elapsed_secs,
        split,
    })
}

fn done_of(s: &Seen) -> Option<wire::Done> {
    serde_json::from_value(s.body.clone()).ok()
}

/// The stages of a split run, from its events.
fn split_run(
    seen: &[Seen],
    whole: uuid::Uuid,
    join: &wire::Done,
    total: f64,
) -> anyhow::Result<SplitRun> {
    let split_ev = seen
        .iter()
        .find(|s| s.key == "rafty.transcode.split" && s.body["id"] == whole.to_string().as_str())
        .ok_or_else(|| anyhow::anyhow!("no split event for {whole}"))?;
    let split: wire::Split = serde_json::from_value(split_ev.body.clone())?;
    anyhow::ensure!(
        !split.chapters.is_empty() && split.jobs.len() == split.chapters.len() + 1,
        "the split event does not name the pieces and the tracks pass: {}",
        split_ev.body
    );
    let step = |id: uuid::Uuid| -> anyhow::Result<StepDone> {
        let s = seen
            .iter()
            .filter(|s| s.key == "rafty.transcode.done")
            .find(|s| done_of(s).is_some_and(|d| d.id == id))
            .ok_or_else(|| anyhow::anyhow!("no done for step {id} of {whole}"))?;
        let d = done_of(s).expect("parsed");
        Ok(StepDone {
            at: s.at,
            host: d.host.clone(),
            elapsed: d.elapsed_secs,
            frames: d.split.as_ref().map_or(0, |x| x.frames),
        })
    };
    let pieces = split.jobs[..split.chapters.len()]
        .iter()
        .map(|&id| step(id))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tracks = step(*split.jobs.last().expect("tracks"))?;
    let js = join.split.as_ref().expect("the join's done has split");
    Ok(SplitRun {
        split_at: split_ev.at,
        chapters: split.chapters.clone(),
        pieces,
        tracks,
        join: StepDone {
            at: total,
            host: join.host.clone(),
            elapsed: join.elapsed_secs,
            frames: js.frames,
        },
        checks: js.checks.clone(),
        fallback: js.fallback.clone(),
    })
}

/// Take the tap's events, each stamped when the bench saw it, until `stop` holds for one (or fails);
/// fail on a `failed` event, a worker that exits, or `timeout`, with the workers' logs.
fn watch(
    amqp: &Amqp,
    tap: &EventTap,
    t0: Instant,
    timeout: Duration,
    workers: &mut [Worker],
    stop: &dyn Fn(&Seen) -> anyhow::Result<bool>,
) -> anyhow::Result<Vec<Seen>> {
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let all = amqp.drain_events(tap);
        let at = t0.elapsed().as_secs_f64();
        for (key, body) in all.into_iter().skip(seen.len()) {
            seen.push(Seen { at, key, body });
        }
        if let Some(f) = seen.iter().find(|s| s.key == "rafty.transcode.failed") {
            anyhow::bail!(
                "a step failed at {:.1} s: {}\n{}",
                f.at,
                f.body,
                logs(workers)
            );
        }
        for s in &seen {
            if stop(s)? {
                return Ok(seen);
            }
        }
        for w in workers.iter_mut() {
            anyhow::ensure!(w.running(), "a worker exited\n{}", logs(workers));
        }
        anyhow::ensure!(
            t0.elapsed() < timeout,
            "no final done within {timeout:?}; events: {:?}\n{}",
            seen.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            logs(workers)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logs(workers: &[Worker]) -> String {
    workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let log = w.log();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "worker {i}'s log (last 40 lines):\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Video packets of `path`'s first video stream (ffprobe -count_packets).
fn count_frames(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .trim_end_matches(',')
        .parse()
        .map_err(|e| anyhow::anyhow!("ffprobe {}: {text:?}: {e}", path.display()))
}

fn rows(p: &Params, order: &[Fleet], runs: &[Vec<Run>]) -> Vec<String> {
    let of = |f: Fleet| &runs[order.iter().position(|&o| o == f).expect("measured")];
    let spread = |v: Vec<f64>| Spread::of(&v);
    let totals = |f: Fleet| spread(of(f).iter().map(|r| r.total).collect());
    let title = format!("{} s title, {} chapters", p.title_secs, p.chapters);
    let base = totals(Fleet::OnePinned);
    let pinned = totals(Fleet::TwoPinned);
    let free = totals(Fleet::TwoFree);
    let one_free = totals(Fleet::OneFree);
    let mut rows = vec![
        format!(
            "| split: {title}, 2 workers on cores 0 and 1, submit → join's done (s) | {} | 1 worker on core 0, whole title {} | {:.2}× sooner | ≥ 1.80× | {} |",
            pinned.show(2),
            base.show(2),
            base.median / pinned.median,
            verdict(base.median / pinned.median >= 1.8)
        ),
        format!(
            "| split: the same, both workers unpinned (s) | {} | 1 worker on core 0, whole title {} | {:.2}× sooner | | |",
            free.show(2),
            base.show(2),
            base.median / free.median,
        ),
        format!(
            "| split, diagnosis: 2 workers unpinned vs 1 unpinned worker (both cores) encoding the whole title (s) | {} | 1 worker unpinned, whole title {} | {:.2}× sooner | | |",
            free.show(2),
            one_free.show(2),
            one_free.median / free.median,
        ),
    ];
    // Frames: every split run's output against the same repetition's whole encode on one core.
    let wholes = of(Fleet::OnePinned);
    let mut worst: i64 = 0;
    let mut shown = Vec::new();
    for f in [Fleet::TwoPinned, Fleet::TwoFree] {
        for (r, w) in of(f).iter().zip(wholes) {
            let d = r.frames as i64 - w.frames as i64;
            if d.abs() > worst.abs() {
                worst = d;
            }
            shown.push(format!("{}", r.frames));
        }
    }
    let whole_frames: Vec<String> = wholes.iter().map(|r| r.frames.to_string()).collect();
    rows.push(format!(
        "| split: video frames, joined output − whole encode (ffprobe -count_packets), worst of {} runs | {worst} (joined {}) | whole encode {} | | = 0 | {} |",
        shown.len(),
        shown.join(", "),
        whole_frames.join(", "),
        verdict(worst == 0)
    ));
    let splits: Vec<&SplitRun> = [Fleet::TwoPinned, Fleet::TwoFree]
        .iter()
        .flat_map(|&f| of(f).iter().filter_map(|r| r.split.as_ref()))
        .collect();
    let clean = splits
        .iter()
        .filter(|s| s.fallback.is_none() && s.checks.iter().all(|c| c.passed))
        .count();
    let failed: Vec<String> = splits
        .iter()
        .flat_map(|s| s.checks.iter().filter(|c| !c.passed))
        .map(|c| format!("{}: {}", c.name, c.detail))
        .chain(splits.iter().filter_map(|s| s.fallback.clone()))
        .collect();
    let names: Vec<&str> = splits
        .first()
        .map(|s| s.checks.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    rows.push(format!(
        "| split: the join's checks ({}), no fallback | {clean} of {} runs{} | | | all | {} |",
        names.join(", "),
        splits.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {}", failed.join("; "))
        },
        verdict(clean == splits.len())
    ));
    let cpu = |f: Fleet| spread(of(f).iter().map(|r| r.cpu).collect());
    let (cb, cp) = (cpu(Fleet::OnePinned), cpu(Fleet::TwoPinned));
    rows.push(format!(
        "| split: CPU of every worker and its children, 2 workers on cores 0 and 1 (s) | {} | 1 worker on core 0, whole title {} | {:.2}× | | |",
        cp.show(1),
        cb.show(1),
        cp.median / cb.median
    ));
    let whole_elapsed = spread(wholes.iter().map(|r| r.elapsed).collect());
    for f in [Fleet::TwoPinned, Fleet::TwoFree] {
        let list: Vec<&SplitRun> = of(f).iter().filter_map(|r| r.split.as_ref()).collect();
        let Some(first) = list.first() else { continue };
        let label = if f == Fleet::TwoPinned {
            "pinned"
        } else {
            "unpinned"
        };
        let at = |g: &dyn Fn(&SplitRun) -> f64| spread(list.iter().map(|s| g(s)).collect());
        rows.push(format!(
            "| split stage ({label}): submit → split event (scan, live-worker round, cut) (s) | {} | | | | |",
            at(&|s| s.split_at).show(2)
        ));
        for (i, range) in first.chapters.iter().enumerate() {
            let share = f64::from(range.last - range.first + 1) / f64::from(p.chapters);
            let piece = spread(
                list.iter()
                    .filter_map(|s| s.pieces.get(i).map(|d| d.elapsed))
                    .collect(),
            );
            let ideal = whole_elapsed.median * share;
            rows.push(format!(
                "| split stage ({label}): video piece {}, chapters {range} (elapsed-secs) | {} | whole encode's {:.2} × {share:.2} of the title = {ideal:.2} | {:.2}× | | |",
                i + 1,
                piece.show(2),
                whole_elapsed.median,
                piece.median / ideal
            ));
        }
        rows.push(format!(
            "| split stage ({label}): tracks pass, whole title's audio, subtitles, chapters (elapsed-secs) | {} | whole encode's {:.2} | {:.2}× | | |",
            at(&|s| s.tracks.elapsed).show(2),
            whole_elapsed.median,
            at(&|s| s.tracks.elapsed).median / whole_elapsed.median
        ));
        rows.push(format!(
            "| split stage ({label}): split event → last piece or tracks pass done (s) | {} | | | | |",
            at(&|s| s
                .pieces
                .iter()
                .chain([&s.tracks])
                .map(|d| d.at)
                .fold(0.0, f64::max)
                - s.split_at)
            .show(2)
        ));
        rows.push(format!(
            "| split stage ({label}): join: merge, checks, output in place (elapsed-secs) | {} | | | | |",
            at(&|s| s.join.elapsed).show(2)
        ));
        rows.push(format!(
            "| split stage ({label}): frames reported by pieces (sum) / tracks pass / join | {} | | | | |",
            list.iter()
                .map(|s| format!(
                    "{} / {} / {}",
                    s.pieces.iter().map(|d| d.frames).sum::<u64>(),
                    s.tracks.frames,
                    s.join.frames
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    rows
}
