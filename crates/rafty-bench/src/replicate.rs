//! The `replicate` group: copies in several places (docs/replicate.md). The real `rafty-replicate`
//! with one directory destination on this machine's disk: the lag from a video put in place (its
//! `done` event published) to its verified copy at the destination (the copy takes its name only
//! once it read back right, so its appearance is the moment it is verified); one large object's
//! copy (hash on the way, fsync, read back, rename) against `cp` + `sync FILE`; and `raftyctl audit`
//! of the library against `sha256sum` over the same files, both from a warm page cache, in turns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rafty_core::names::EVENTS_EXCHANGE;
use rafty_core::output::Sidecar;
use rafty_core::wire::{self, Event};
use rafty_testkit::Amqp;
use rafty_testkit::{Env, bin};

use crate::{median, verdict};

/// Sizes of one run.
pub struct Params {
    /// Videos whose lag is measured.
    pub videos: usize,
    /// Size of each, MiB.
    pub video_mib: u64,
    /// The large object copied against `cp`, MiB.
    pub big_mib: u64,
    /// Repetitions of the copy and the audit comparisons.
    pub reps: usize,
}

impl Params {
    /// CI's short run or the full one.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                videos: 8,
                video_mib: 4,
                big_mib: 64,
                reps: 1,
            }
        } else {
            Params {
                videos: 40,
                video_mib: 64,
                big_mib: 1024,
                reps: 5,
            }
        }
    }

    /// For the page.
    pub fn describe(&self) -> String {
        format!(
            "{} videos of {} MiB for the lag; a {} MiB object copied, {} repetitions; the audit of that library (the videos, their sidecars and the objects) against sha256sum, {} repetitions",
            self.videos, self.video_mib, self.big_mib, self.reps, self.reps
        )
    }
}

/// Incompressible bytes, different per `seed`.
fn write_file(path: &Path, mib: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create a file"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf).expect("write a file");
    }
    f.into_inner()
        .expect("flush")
        .sync_all()
        .expect("fsync a file");
}

fn sha256(path: &Path) -> String {
    rafty_replicate::dest::digest_file(path)
        .expect("hash a file")
        .sha256
}

/// Put a video and its sidecar in the library as a worker does, and announce it.
fn place_video(env: &Env, amqp: &Amqp, name: &str, mib: u64, seed: u64) -> PathBuf {
    let video = env.media_dir.join(name);
    write_file(&video, mib, seed);
    let size = std::fs::metadata(&video).expect("the video").len();
    let sha = sha256(&video);
    let sidecar = Sidecar {
        job_id: uuid::Uuid::new_v4().to_string(),
        source_path: env.iso_dir.join("bench.iso"),
        source_size: 1,
        source_sha256: None,
        source_label: None,
        title: 1,
        preset: "bench".into(),
        handbrake: "HandBrake 1.6.1".into(),
        output: name.into(),
        output_size: size,
        output_sha256: Some(sha.clone()),
        output_duration_secs: 1.0,
        title_duration_secs: 1.0,
        host: "bench".into(),
        finished_at: "2026-01-01T00:00:00Z".into(),
    };
    std::fs::write(
        rafty_core::output::sidecar_path(&video),
        serde_json::to_vec_pretty(&sidecar).expect("a sidecar"),
    )
    .expect("write the sidecar");
    let done = Event::Done(wire::Done {
        id: uuid::Uuid::new_v4(),
        host: "bench".into(),
        name: name.into(),
        disc: None,
        outputs: vec![wire::OutputDone {
            path: video.clone(),
            title: 1,
            duration_secs: 1.0,
            size,
            skipped: false,
            sha256: Some(sha),
        }],
        skipped: false,
        attempt: 0,
        preset: "bench".into(),
        handbrake: "HandBrake 1.6.1".into(),
        elapsed_secs: 1.0,
        finished_at: "2026-01-01T00:00:00Z".into(),
        split: None,
    });
    amqp.publish(
        EVENTS_EXCHANGE,
        done.routing_key(),
        &done.to_json(),
        lapin::BasicProperties::default().with_delivery_mode(2),
    );
    video
}

/// Wait for `path` to exist (a copy takes its name only once verified).
fn appeared(path: &Path, timeout: Duration) -> Instant {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Instant::now()
}

struct Replicator(Child);

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the group.
pub fn bench(env: &Env, p: &Params) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(&env.media_dir)?;
    let dest = env.path().join("usb");
    std::fs::create_dir_all(&dest)?;
    let ledger = env.path().join("state/ledger.json");
    let mut config = std::fs::read_to_string(env.config())?;
    config.push_str(&format!(
        "\n[replicate]\nledger = {:?}\nprobe-interval = \"1s\"\ndestinations = [{{ name = \"usb\", url = \"file://{}\" }}]\n",
        ledger.display().to_string(),
        dest.display()
    ));
    std::fs::write(env.config(), config)?;
    let log = env.path().join("replicate.log");
    let _replicator = Replicator(
        Command::new(bin("rafty-replicate"))
            .arg("--config")
            .arg(env.config())
            .env_remove("RAFTY_AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting for copy requests")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "rafty-replicate did not connect: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let amqp = Amqp::connect(&env.url);

    // Lag: one video at a time, from its done event to its verified copy.
    let mut lags = Vec::new();
    for i in 0..p.videos {
        let name = format!("Video {i}.mkv");
        let placed = Instant::now();
        place_video(env, &amqp, &name, p.video_mib, i as u64);
        let copied = appeared(&dest.join("media").join(&name), Duration::from_secs(120));
        lags.push((copied - placed).as_secs_f64());
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    let p50 = lags[lags.len() / 2];
    let p99 = lags[((lags.len() as f64 * 0.99).ceil() as usize).min(lags.len()) - 1];

    // One large object: rafty-replicate's copy against cp + sync of the same file, in turns.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for rep in 0..p.reps {
        let name = format!("Big {rep}.mkv");
        let video = place_video(env, &amqp, &name, p.big_mib, 1000 + rep as u64);
        // Writing the video itself is not the copy's work: measured from the event on.
        let announced = Instant::now();
        let copied = appeared(&dest.join("media").join(&name), Duration::from_secs(600));
        ours.push(p.big_mib as f64 / (copied - announced).as_secs_f64());
        let target = env.path().join(format!("cp-{rep}.mkv"));
        let t0 = Instant::now();
        let cp = Command::new("cp").arg(&video).arg(&target).status()?;
        let sync = Command::new("sync").arg(&target).status()?;
        anyhow::ensure!(cp.success() && sync.success(), "cp or sync failed");
        theirs.push(p.big_mib as f64 / t0.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&target);
    }
    let copy = median(&mut ours);
    let cp = median(&mut theirs);

    // The audit of the library against sha256sum over the same files.
    let files: Vec<PathBuf> = std::fs::read_dir(&env.media_dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "mkv"))
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()
        + files.len() as u64 * 700;
    let mib = bytes as f64 / 1048576.0;
    let mut audits = Vec::new();
    let mut sums = Vec::new();
    for _ in 0..p.reps {
        let t0 = Instant::now();
        let out = Command::new(bin("raftyctl"))
            .arg("--config")
            .arg(env.config())
            .args(["audit", "--dest", "library"])
            .env_remove("RAFTY_AMQP_URL")
            .output()?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "raftyctl audit: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        audits.push(mib / secs);
        let t0 = Instant::now();
        let mut sidecars: Vec<PathBuf> = files
            .iter()
            .map(|f| rafty_core::output::sidecar_path(f))
            .collect();
        sidecars.extend(files.iter().cloned());
        let out = Command::new("sha256sum")
            .args(&sidecars)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(out.success(), "sha256sum failed");
        sums.push(mib / t0.elapsed().as_secs_f64());
    }
    let audit = median(&mut audits);
    let sum = median(&mut sums);

    Ok(vec![
        format!(
            "| replication lag, output in place → verified copy, p50 (s) | {p50:.3} | target 5 s | {:.3}× | ≤ 1.00× | {} |",
            p50 / 5.0,
            verdict(p50 <= 5.0)
        ),
        format!(
            "| diagnosis: replication lag p99 (s), {} MiB videos | {p99:.3} | | | | |",
            p.video_mib
        ),
        format!(
            "| copy of one {} MiB object to a directory (MB/s): hash, fsync, read back, rename | {copy:.0} | cp + sync {cp:.0} | {:.2}× | reported | |",
            p.big_mib,
            copy / cp
        ),
        format!(
            "| raftyctl audit of the library (MiB/s) | {audit:.0} | sha256sum over the same files {sum:.0} | {:.2}× | ≥ 0.9× | {} |",
            audit / sum,
            verdict(audit / sum >= 0.9)
        ),
    ])
}
