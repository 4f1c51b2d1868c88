//! One long title split by chapters across workers and joined without a seam (docs/split.md): the
//! joined video is held against a whole encode of the same title (frames, duration, sound, chapter
//! marks, a clean decode, and the picture frame by frame around every seam), a worker killed in the
//! middle of a piece costs that piece alone, a title of one chapter is encoded whole, and uneven
//! chapters are grouped by duration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rafty_core::job::{Piece, Step};
use rafty_core::names::{JOB_TYPE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_testkit::{
    Amqp, Env, EventTap, Worker, fixture_iso_chapters, job_properties, shared_broker, wait_for,
};
use serde_json::{Value, json};
use uuid::Uuid;

const JOB_TIMEOUT: Duration = Duration::from_secs(240);
/// NTSC: one video frame, in seconds.
const FRAME: f64 = 1001.0 / 30000.0;
/// Frames each side of a seam whose picture is held against the whole encode: a second, so the
/// test pattern's counter changes at least once inside (a frame slipped there cannot go unseen).
const SEAM_WINDOW: i64 = 30;
/// Lowest PSNR (dB) a frame near a seam may have against the same frame of the whole encode.
/// Measured: 48.4 dB at worst (most frames are bit-identical); one frame off, the counter's change
/// drops to 20-26 dB.
const SEAM_PSNR_MIN: f64 = 35.0;

/// The 160 s title of 8 chapters of 20 s.
const EIGHT_CHAPTERS: &str = "160@0,20,40,60,80,100,120,140";

fn env(test: &str) -> Env {
    Env::new(shared_broker(), test)
}

/// Workers that print their logs when the test fails (and are killed when dropped).
struct Crew {
    workers: Vec<(String, Worker)>,
}

impl Crew {
    fn new() -> Crew {
        Crew {
            workers: Vec::new(),
        }
    }

    /// Start a worker named `host` with the default config but for its host name.
    fn start(&mut self, env: &Env, host: &str) {
        let cfg = env.write_config(&format!("{host}.toml"), Some(host), &[]);
        let mut w = env.worker(&cfg, &[]);
        w.wait_log("waiting for jobs", Duration::from_secs(60));
        self.workers.push((host.to_owned(), w));
    }

    fn get(&mut self, host: &str) -> &mut Worker {
        &mut self
            .workers
            .iter_mut()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no worker {host}"))
            .1
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|(h, w)| format!("----- worker {h} -----\n{}", w.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Start `hosts` and wait until each consumes the work queue.
fn crew(env: &Env, amqp: &Amqp, hosts: &[&str]) -> Crew {
    let mut crew = Crew::new();
    for h in hosts {
        crew.start(env, h);
    }
    wait_for(
        &format!("{} consumers", hosts.len()),
        Duration::from_secs(30),
        || (amqp.counts(WORK_QUEUE).1 as usize == hosts.len()).then_some(()),
    );
    crew
}

fn ffprobe(args: &[&str], path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Video frames in the file, counted packet by packet.
fn frames(path: &Path) -> u64 {
    ffprobe(
        &[
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ],
        path,
    )
    .trim()
    .parse()
    .expect("a packet count")
}

/// Where the stream `sel` (`v:0`, `a:0`) ends: its last packet's time plus duration.
fn stream_end(path: &Path, sel: &str) -> f64 {
    ffprobe(
        &[
            "-select_streams",
            sel,
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
        ],
        path,
    )
    .lines()
    .filter_map(|l| {
        let mut f = l.split(',');
        let pts: f64 = f.next()?.trim().parse().ok()?;
        let dur: f64 = f.next().and_then(|d| d.trim().parse().ok()).unwrap_or(0.0);
        Some(pts + dur)
    })
    .fold(f64::NAN, f64::max)
}

/// The container's duration.
fn format_secs(path: &Path) -> f64 {
    ffprobe(
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
        path,
    )
    .trim()
    .parse()
    .expect("a duration")
}

/// Chapter start times, in seconds.
fn chapter_starts(path: &Path) -> Vec<f64> {
    let v: Value =
        serde_json::from_str(&ffprobe(&["-show_chapters", "-of", "json"], path)).unwrap();
    v["chapters"]
        .as_array()
        .expect("chapters")
        .iter()
        .map(|c| c["start_time"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The first audio stream's sample rate.
fn sample_rate(path: &Path) -> f64 {
    ffprobe(
        &[
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate",
            "-of",
            "csv=p=0",
        ],
        path,
    )
    .trim()
    .parse()
    .expect("an audio stream with a sample rate")
}

/// Decode every stream of the file; returns ffmpeg's exit status and what it said.
fn decode(path: &Path) -> (bool, String) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Per-frame PSNR (dB; infinite for identical frames) of `a` against `b`, frames paired by index
/// (timestamps rebuilt from frame numbers: the two files need not start at the same time): once
/// aligned, and once with `a` one frame ahead (`a[n + 1]` against `b[n]`), a frame dropped at a seam.
fn psnr(a: &Path, b: &Path, dir: &Path) -> (Vec<f64>, Vec<f64>) {
    let aligned = dir.join("psnr-aligned.log");
    let shifted = dir.join("psnr-shifted.log");
    let r = "30000/1001";
    let graph = format!(
        "[0:v]setpts=N/({r})/TB,split[a0][a1];[1:v]setpts=N/({r})/TB,split[b0][b1];\
         [a0][b0]psnr=stats_file={}[o0];\
         [a1]select='gte(n,1)',setpts=N/({r})/TB[a1s];[a1s][b1]psnr=stats_file={}[o1]",
        aligned.display(),
        shifted.display()
    );
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args(["-filter_complex", &graph, "-map", "[o0]", "-map", "[o1]"])
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg psnr");
    assert!(
        out.status.success(),
        "ffmpeg psnr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &Path| -> Vec<f64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v = l
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("psnr_avg:"))
                    .unwrap_or_else(|| panic!("no psnr_avg in {l:?}"));
                if v == "inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap()
                }
            })
            .collect()
    };
    (read(&aligned), read(&shifted))
}

/// Lowest value of `series[from..to]` (clamped to the series).
fn min_in(series: &[f64], from: i64, to: i64) -> f64 {
    let lo = from.max(0) as usize;
    let hi = (to.max(0) as usize).min(series.len());
    series[lo..hi].iter().copied().fold(f64::INFINITY, f64::min)
}

/// The split job's event (`rafty.transcode.split` with chapters) for `id`.
fn wait_split(amqp: &Amqp, tap: &EventTap, id: &str) -> Value {
    amqp.wait_event(tap, "split", JOB_TIMEOUT, |v| v["id"] == id)
}

/// The join's `done` for the split job `id`.
fn wait_join(amqp: &Amqp, tap: &EventTap, id: &str) -> Value {
    amqp.wait_event(tap, "done", JOB_TIMEOUT, |v| {
        v["split"]["whole"] == id && v["split"]["step"] == "join"
    })
}

/// The job ids a split of `whole` into `pieces` pieces makes: the video pieces, then the tracks pass.
fn step_ids(whole: &str, pieces: usize) -> (Vec<String>, String) {
    let whole = Uuid::parse_str(whole).unwrap();
    let videos = (0..pieces)
        .map(|i| Piece::job_id(whole, Step::Video { index: i as u32 }).to_string())
        .collect();
    (videos, Piece::job_id(whole, Step::Tracks).to_string())
}

/// The split event lists every piece's job in `chapters` order, then the tracks pass.
fn assert_split_jobs(split: &Value, videos: &[String], tracks: &str) {
    let jobs: Vec<&str> = split["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    let want: Vec<&str> = videos.iter().map(String::as_str).collect();
    assert_eq!(
        jobs[..jobs.len().saturating_sub(1)],
        want[..],
        "every piece's job once, in chapter order: {split}"
    );
    assert_eq!(jobs.last(), Some(&tracks), "the tracks pass last: {split}");
}

/// The `done` events of `job` in `events`.
fn dones<'a>(events: &'a [(String, Value)], job: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.done" && v["id"] == job)
        .map(|(_, v)| v)
        .collect()
}

/// How many `started` events `job` has in `events`.
fn starts(events: &[(String, Value)], job: &str) -> usize {
    events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.started" && v["id"] == job)
        .count()
}

/// Every check of the join passed, and it did not fall back to a whole encode.
fn assert_checks_passed(join: &Value, pieces: usize) {
    let checks = join["split"]["checks"].as_array().expect("checks");
    let failed: Vec<&Value> = checks.iter().filter(|c| c["passed"] != true).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}\n{join:#}");
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["frames", "duration", "audio", "chapters"] {
        assert!(names.contains(&name), "no {name:?} check: {names:?}");
    }
    assert_eq!(
        names.iter().filter(|n| n.starts_with("seam")).count(),
        pieces - 1,
        "one check per seam: {names:?}"
    );
    assert!(
        join["split"]["fallback"].is_null(),
        "the join fell back to a whole encode: {join:#}"
    );
}

/// Every file left under the media directory's `.rafty-split`.
fn split_leftovers(env: &Env) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                }
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.media_dir.join(".rafty-split"), &mut out);
    out
}

/// The intermediate directory of `whole` is removed, and nothing else is left beside it.
fn assert_split_dir_gone(env: &Env, whole: &str) {
    let dir = env.media_dir.join(".rafty-split").join(whole);
    wait_for(
        &format!("{} to be removed", dir.display()),
        Duration::from_secs(10),
        || (!dir.exists()).then_some(()),
    );
    assert_eq!(
        split_leftovers(env),
        Vec::<PathBuf>::new(),
        "left in .rafty-split"
    );
}

/// The media directory's files but an empty `.rafty-split` (checked on its own).
fn media_outputs(env: &Env) -> Vec<String> {
    env.media_files()
        .into_iter()
        .filter(|n| n != ".rafty-split" || !split_leftovers(env).is_empty())
        .collect()
}

fn sidecar(video: &Path) -> Value {
    let mut s = video.as_os_str().to_owned();
    s.push(".rafty.json");
    serde_json::from_slice(&std::fs::read(PathBuf::from(s)).expect("the sidecar")).unwrap()
}

/// The piece frame counts from the video steps' `done`s, in piece order (each piece done once).
fn piece_frames(events: &[(String, Value)], videos: &[String]) -> Vec<u64> {
    videos
        .iter()
        .map(|job| {
            let d = dones(events, job);
            assert_eq!(d.len(), 1, "piece {job} done once: {d:?}");
            assert_eq!(d[0]["split"]["step"], "video", "{}", d[0]);
            d[0]["split"]["frames"].as_u64().expect("frames")
        })
        .collect()
}

fn tracks_frames(events: &[(String, Value)], tracks: &str) -> u64 {
    let d = dones(events, tracks);
    assert_eq!(d.len(), 1, "the tracks pass done once: {d:?}");
    assert_eq!(d[0]["split"]["step"], "tracks", "{}", d[0]);
    d[0]["split"]["frames"].as_u64().expect("frames")
}

#[test]
fn split_title_matches_a_whole_encode() {
    let env = env("split-whole");
    let iso = env.add_iso(
        &fixture_iso_chapters("SPLIT_FILM", &[EIGHT_CHAPTERS]),
        "Split Film.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let crew = crew(&env, &amqp, &["split-a", "split-b"]);

    let started = std::time::Instant::now();
    let submitted = env.raftyctl(&[
        "submit",
        "--json",
        "--split",
        "chapters",
        "--name",
        "Split Film",
        iso.to_str().unwrap(),
    ]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let job: Value =
        serde_json::from_slice(&submitted.stdout).expect("submit --json prints the job");
    assert_eq!(job["encode"]["split"], "chapters", "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let split = wait_split(&amqp, &tap, &id);
    assert_eq!(
        split["chapters"],
        json!([{"first": 1, "last": 4}, {"first": 5, "last": 8}]),
        "two live workers: two pieces of four chapters (80 s each): {split}"
    );
    let (videos, tracks) = step_ids(&id, 2);
    assert_split_jobs(&split, &videos, &tracks);
    let join = wait_join(&amqp, &tap, &id);
    let split_secs = started.elapsed().as_secs_f64();
    assert_checks_passed(&join, 2);
    let out = env.media_dir.join("Split Film.mkv");
    assert_eq!(join["outputs"][0]["path"], out.to_str().unwrap(), "{join}");
    assert_eq!(join["outputs"].as_array().unwrap().len(), 1, "{join}");
    assert_split_dir_gone(&env, &id);
    assert_eq!(
        media_outputs(&env),
        ["Split Film.mkv", "Split Film.mkv.rafty.json"],
        "one video and its sidecar, nothing else"
    );
    let side = sidecar(&out);
    // The done is the join's; the sidecar names the submitted job, as an unsplit output's does.
    let join_id = Piece::job_id(Uuid::parse_str(&id).unwrap(), Step::Join).to_string();
    assert_eq!(join["id"], join_id.as_str(), "{join}");
    assert_eq!(side["job-id"], id.as_str(), "{side}");
    assert_eq!(side["output-size"], std::fs::metadata(&out).unwrap().len());

    let events = amqp.drain_events(&tap);
    let pieces = piece_frames(&events, &videos);
    let tracked = tracks_frames(&events, &tracks);
    let mut hosts: Vec<&str> = videos
        .iter()
        .map(|j| dones(&events, j)[0]["host"].as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["split-a", "split-b"], "one piece on each worker");
    assert!(
        dones(&events, &id).is_empty(),
        "the split job itself has no done (its title's is the join's)"
    );

    // The reference: the same title encoded whole by a worker of the same fleet.
    let started = std::time::Instant::now();
    let ref_id = env.submit(&iso, &["--name", "Whole Film"]);
    let whole = amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == ref_id.as_str());
    let whole_secs = started.elapsed().as_secs_f64();
    assert!(
        whole["split"].is_null(),
        "the reference is not split: {whole}"
    );
    let reference = env.media_dir.join("Whole Film.mkv");
    let ref_side = sidecar(&reference);
    for key in ref_side.as_object().unwrap().keys() {
        assert!(
            side.get(key).is_some(),
            "the split output's sidecar lacks {key:?}: {side}"
        );
    }

    // Frames and duration.
    let n = frames(&out);
    let n_ref = frames(&reference);
    println!(
        "split: pieces {pieces:?} frames, tracks pass {tracked}, join {}, output {n}; whole encode {n_ref}; \
         split took {split_secs:.1} s, the whole encode {whole_secs:.1} s",
        join["split"]["frames"]
    );
    assert_eq!(n, n_ref, "video frames: split vs whole");
    assert_eq!(pieces.iter().sum::<u64>(), n, "the pieces are the output");
    assert_eq!(tracked, n_ref, "the tracks pass saw the whole title");
    assert_eq!(join["split"]["frames"], n, "{join}");
    let (v, v_ref) = (stream_end(&out, "v:0"), stream_end(&reference, "v:0"));
    let (f, f_ref) = (format_secs(&out), format_secs(&reference));
    println!(
        "split: video ends {v:.4} s (whole {v_ref:.4} s), container {f:.4} s (whole {f_ref:.4} s)"
    );
    assert!(
        (v - v_ref).abs() <= FRAME + 1e-3,
        "video duration: {v} vs {v_ref}"
    );
    assert!(
        (f - f_ref).abs() <= FRAME + 1e-3,
        "duration: {f} vs {f_ref}"
    );

    // Sound: as long as the whole encode's, within one audio frame and one video frame.
    let (a, a_ref) = (stream_end(&out, "a:0"), stream_end(&reference, "a:0"));
    let audio_frame = 1024.0 / sample_rate(&reference);
    println!("split: audio ends {a:.4} s (whole {a_ref:.4} s)");
    assert!(
        (a - a_ref).abs() <= audio_frame + FRAME + 1e-3,
        "audio duration: {a} vs {a_ref}"
    );

    // Chapter marks.
    let (c, c_ref) = (chapter_starts(&out), chapter_starts(&reference));
    println!("split: chapters at {c:?} (whole {c_ref:?})");
    assert_eq!(c.len(), 8, "{c:?}");
    assert_eq!(c.len(), c_ref.len(), "{c:?} vs {c_ref:?}");
    for (i, (x, y)) in c.iter().zip(&c_ref).enumerate() {
        assert!(
            (x - y).abs() <= FRAME + 1e-3,
            "chapter {}: {x} vs {y}",
            i + 1
        );
    }

    // A clean decode.
    let (ok, said) = decode(&out);
    assert!(
        ok && said.trim().is_empty(),
        "ffmpeg decoding the output: {said}"
    );

    // The picture around the seam, frame by frame, against the whole encode.
    let seam = pieces[0] as i64;
    let chapter5 = c_ref[4] / FRAME;
    assert!(
        (seam as f64 - chapter5).abs() <= 1.0,
        "the seam (frame {seam}) is where chapter 5 starts in the whole encode (frame {chapter5:.1})"
    );
    let (aligned, shifted) = psnr(&out, &reference, env.path());
    assert_eq!(aligned.len() as u64, n, "one PSNR per frame");
    let at_seam = min_in(&aligned, seam - SEAM_WINDOW, seam + SEAM_WINDOW + 1);
    let slipped = min_in(&shifted, seam - SEAM_WINDOW, seam + SEAM_WINDOW + 1);
    let everywhere = min_in(&aligned, 0, n as i64);
    let around: Vec<String> = (seam - 3..=seam + 3)
        .map(|i| format!("{:.2}", aligned[i as usize]))
        .collect();
    println!(
        "split: PSNR against the whole encode: at worst {at_seam:.2} dB within {SEAM_WINDOW} frames of the seam \
         (frame {seam}; frames {}..={}: {}), {everywhere:.2} dB over the title; one frame off: {slipped:.2} dB",
        seam - 3,
        seam + 3,
        around.join(" ")
    );
    assert!(
        slipped < SEAM_PSNR_MIN,
        "the measure would not see a frame slipped at the seam: {slipped} dB"
    );
    assert!(
        at_seam >= SEAM_PSNR_MIN,
        "the picture near the seam differs from the whole encode: {at_seam} dB"
    );
    assert!(
        everywhere >= SEAM_PSNR_MIN,
        "a frame of the split output differs from the whole encode: {everywhere} dB"
    );

    // The split job delivered again (a producer's outbox publishing it twice): its title is in
    // place, so nothing is split or encoded again.
    amqp.publish(
        RIP_EXCHANGE,
        "rafty.rip.iso.dvd",
        job.to_string().as_bytes(),
        job_properties(&id, JOB_TYPE),
    );
    let again = amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| {
        v["id"] == id.as_str() && v["skipped"] == true
    });
    assert_eq!(
        again["outputs"][0]["path"],
        out.to_str().unwrap(),
        "{again}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let events = amqp.drain_events(&tap);
    let splits = events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.split" && v["id"] == id.as_str())
        .count();
    assert_eq!(splits, 1, "split once");
    for job in videos.iter().chain([&tracks]) {
        assert_eq!(starts(&events, job), 1, "step {job} ran once");
    }
    assert_eq!(
        media_outputs(&env),
        [
            "Split Film.mkv",
            "Split Film.mkv.rafty.json",
            "Whole Film.mkv",
            "Whole Film.mkv.rafty.json"
        ],
        "nothing new in the media directory"
    );
    drop(crew);
}

#[test]
fn a_killed_piece_is_redone_alone() {
    let env = env("split-kill");
    let iso = env.add_iso(
        &fixture_iso_chapters("SPLIT_KILL", &["80@0,20,40,60"]),
        "Killed Film.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let mut crew = crew(&env, &amqp, &["kill-a", "kill-b"]);
    let id = env.submit(&iso, &["--split", "chapters", "--name", "Killed Film"]);
    let split = wait_split(&amqp, &tap, &id);
    assert_eq!(
        split["chapters"],
        json!([{"first": 1, "last": 2}, {"first": 3, "last": 4}]),
        "{split}"
    );
    let (videos, tracks) = step_ids(&id, 2);
    assert_split_jobs(&split, &videos, &tracks);

    // The first piece to start: its worker dies without a word, mid-encode.
    let started = amqp.wait_event(&tap, "started", JOB_TIMEOUT, |v| {
        videos.iter().any(|p| v["id"] == p.as_str())
    });
    let killed = started["id"].as_str().unwrap().to_owned();
    let host = started["host"].as_str().unwrap().to_owned();
    let victim = crew.get(&host);
    victim.signal(Signal::SIGKILL);
    victim.wait(Duration::from_secs(10));
    crew.start(&env, "kill-c");

    let join = wait_join(&amqp, &tap, &id);
    assert_checks_passed(&join, 2);
    let out = env.media_dir.join("Killed Film.mkv");
    assert_eq!(join["outputs"][0]["path"], out.to_str().unwrap(), "{join}");
    assert_split_dir_gone(&env, &id);
    assert_eq!(
        media_outputs(&env),
        ["Killed Film.mkv", "Killed Film.mkv.rafty.json"]
    );

    std::thread::sleep(Duration::from_secs(2));
    let events = amqp.drain_events(&tap);
    let pieces = piece_frames(&events, &videos);
    let tracked = tracks_frames(&events, &tracks);
    let redone = dones(&events, &killed);
    assert_ne!(
        redone[0]["host"], host,
        "the killed piece was finished by another worker: {}",
        redone[0]
    );
    for job in &videos {
        let want = if *job == killed { 2 } else { 1 };
        assert_eq!(
            starts(&events, job),
            want,
            "piece {job} started {want} time(s) (killed: {killed})"
        );
    }
    assert_eq!(starts(&events, &tracks), 1, "the tracks pass ran once");
    let joins = events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.done" && v["split"]["step"] == "join")
        .count();
    assert_eq!(joins, 1, "one join");

    let n = frames(&out);
    println!(
        "kill: piece {killed} of {host} killed at its start; pieces {pieces:?} frames, tracks {tracked}, output {n}"
    );
    assert_eq!(pieces.iter().sum::<u64>(), n, "the pieces are the output");
    assert_eq!(tracked, n, "as many frames as the whole title");
    assert!(
        (n as f64 - 80.0 / FRAME).abs() < 15.0,
        "80 s of NTSC video: {n} frames"
    );
    let (ok, said) = decode(&out);
    assert!(
        ok && said.trim().is_empty(),
        "ffmpeg decoding the output: {said}"
    );
    drop(crew);
}

#[test]
fn a_title_with_one_chapter_is_not_split() {
    let env = env("split-one");
    let iso = env.add_iso(
        &fixture_iso_chapters("SPLIT_ONE", &["40@0"]),
        "One Chapter.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let crew = crew(&env, &amqp, &["one-a", "one-b"]);
    let id = env.submit(&iso, &["--split", "chapters", "--name", "One Chapter"]);
    let done = amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == id.as_str());
    assert!(done["split"].is_null(), "encoded whole: {done}");
    let out = env.media_dir.join("One Chapter.mkv");
    assert_eq!(done["outputs"][0]["path"], out.to_str().unwrap(), "{done}");

    std::thread::sleep(Duration::from_secs(2));
    let events = amqp.drain_events(&tap);
    let splits: Vec<&Value> = events
        .iter()
        .filter(|(k, v)| {
            k == "rafty.transcode.split" && v["chapters"].as_array().is_some_and(|c| !c.is_empty())
        })
        .map(|(_, v)| v)
        .collect();
    assert!(splits.is_empty(), "no chapter split: {splits:?}");
    let others: Vec<&Value> = events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.started" && v["id"] != id.as_str())
        .map(|(_, v)| v)
        .collect();
    assert!(others.is_empty(), "no piece jobs: {others:?}");
    assert_eq!(starts(&events, &id), 1);
    assert_eq!(dones(&events, &id).len(), 1);
    assert!(
        !env.media_dir.join(".rafty-split").join(&id).exists() && split_leftovers(&env).is_empty(),
        "no split directory: {:?}",
        split_leftovers(&env)
    );
    assert_eq!(
        media_outputs(&env),
        ["One Chapter.mkv", "One Chapter.mkv.rafty.json"]
    );
    let n = frames(&out);
    println!("one chapter: {n} frames, encoded whole");
    assert!((n as f64 - 40.0 / FRAME).abs() < 15.0, "40 s: {n} frames");
    drop(crew);
}

#[test]
fn uneven_chapters_are_grouped_by_duration() {
    let env = env("split-uneven");
    let iso = env.add_iso(
        &fixture_iso_chapters("SPLIT_UNEVEN", &["150@0,5,10,120"]),
        "Uneven Film.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let crew = crew(&env, &amqp, &["uneven-a", "uneven-b"]);
    let id = env.submit(&iso, &["--split", "chapters", "--name", "Uneven Film"]);
    let split = wait_split(&amqp, &tap, &id);
    // Chapters of 5, 5, 110 and 30 s: 120 + 30 is the split whose longest piece is shortest.
    assert_eq!(
        split["chapters"],
        json!([{"first": 1, "last": 3}, {"first": 4, "last": 4}]),
        "{split}"
    );
    let (videos, tracks) = step_ids(&id, 2);
    assert_split_jobs(&split, &videos, &tracks);
    let join = wait_join(&amqp, &tap, &id);
    assert_checks_passed(&join, 2);
    let out = env.media_dir.join("Uneven Film.mkv");
    assert_eq!(join["outputs"][0]["path"], out.to_str().unwrap(), "{join}");
    assert_split_dir_gone(&env, &id);

    let events = amqp.drain_events(&tap);
    let pieces = piece_frames(&events, &videos);
    let tracked = tracks_frames(&events, &tracks);
    let n = frames(&out);
    let c = chapter_starts(&out);
    println!("uneven: pieces {pieces:?} frames, tracks {tracked}, output {n}; chapters at {c:?}");
    assert_eq!(pieces.iter().sum::<u64>(), n, "the pieces are the output");
    assert_eq!(tracked, n, "as many frames as the whole title");
    assert!(
        (pieces[0] as f64 - 120.0 / FRAME).abs() < 15.0
            && (pieces[1] as f64 - 30.0 / FRAME).abs() < 15.0,
        "pieces of 120 s and 30 s: {pieces:?}"
    );
    assert_eq!(c.len(), 4, "{c:?}");
    for (got, want) in c.iter().zip([0.0, 5.0, 10.0, 120.0]) {
        assert!(
            (got - want).abs() < 0.5,
            "chapter at {got} s, authored at {want} s"
        );
    }
    let seam = pieces[0] as f64 * FRAME;
    assert!(
        (seam - c[3]).abs() <= FRAME + 1e-3,
        "the seam ({seam} s) is where chapter 4 starts ({} s)",
        c[3]
    );
    let (ok, said) = decode(&out);
    assert!(
        ok && said.trim().is_empty(),
        "ffmpeg decoding the output: {said}"
    );
    drop(crew);
}

#[test]
fn a_piece_damaged_after_its_check_makes_the_join_encode_the_title_whole() {
    let env = env("split-fallback");
    let iso = env.add_iso(
        &fixture_iso_chapters("SPLIT_UNEVEN", &["150@0,5,10,120"]),
        "Damaged Film.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let crew = crew(&env, &amqp, &["fallback-a", "fallback-b"]);
    let id = env.submit(&iso, &["--split", "chapters", "--name", "Damaged Film"]);
    let split = wait_split(&amqp, &tap, &id);
    assert_eq!(
        split["chapters"].as_array().map(Vec::len),
        Some(2),
        "{split}"
    );
    // Piece 2 (chapter 4, 30 s) is done long before piece 1 (120 s). Once its worker has checked
    // and recorded it, cut it in half, as a disk that lost its end would: no worker can be made to
    // write a bad piece past its own check, and the join must not trust the record alone.
    let dir = env.media_dir.join(".rafty-split").join(&id);
    let piece = dir.join("piece-01.mkv");
    let record = dir.join("piece-01.mkv.json");
    wait_for("piece 2 recorded", JOB_TIMEOUT, || {
        record.exists().then_some(())
    });
    let len = std::fs::metadata(&piece).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&piece)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let first = Piece::job_id(Uuid::parse_str(&id).unwrap(), Step::Video { index: 0 });
    let events_before = amqp.drain_events(&tap);
    assert!(
        dones(&events_before, &first.to_string()).is_empty(),
        "piece 1 must still be running when piece 2 is damaged"
    );

    let join = wait_join(&amqp, &tap, &id);
    let why = join["split"]["fallback"].as_str().unwrap_or_default();
    println!("fallback: {why}");
    assert!(!why.is_empty(), "the join must fall back: {join:#}");
    let out = env.media_dir.join("Damaged Film.mkv");
    assert_eq!(join["outputs"][0]["path"], out.to_str().unwrap(), "{join}");
    assert_eq!(sidecar(&out)["job-id"], id.as_str());
    assert_split_dir_gone(&env, &id);
    let events = amqp.drain_events(&tap);
    let (_, tracks) = step_ids(&id, 2);
    let whole_frames = tracks_frames(&events, &tracks);
    assert_eq!(
        frames(&out),
        whole_frames,
        "the whole-title encode has every frame of the title"
    );
    assert_eq!(
        media_outputs(&env),
        vec!["Damaged Film.mkv", "Damaged Film.mkv.rafty.json"],
        "one output, no partial join left"
    );
    let (ok, said) = decode(&out);
    assert!(
        ok && said.trim().is_empty(),
        "ffmpeg decoding the output: {said}"
    );
    drop(crew);
}
