//! Copies in several places (issue 16, docs/replicate.md): the real `rafty-replicate`, `transcoded`,
//! HandBrakeCLI and `raftyctl` against a private RabbitMQ node, with directory destinations (plain
//! directories standing for USB disks, one on a tiny loop-mounted ext4 that fills up) and a real
//! S3-compatible server on loopback (PyPI's moto, `rafty_testkit::s3`: it installs from PyPI in
//! seconds, where an S3 server built from crates would add minutes of `cargo install` to CI).
//!
//! - Replication: a real DVD-Video image named `Amélie – Director's Cut.iso` through `raftyctl
//!   submit` and a real worker; the image, the video and its sidecar reach both directories and the
//!   bucket with the library's SHA-256, the ledger records each copy, and the ledger itself is copied.
//!   The replicator stopped (SIGTERM, exit 0) while a job finishes: its queues keep the backlog and a
//!   new replicator catches up. A destination whose root is renamed away (an unplugged disk) holds
//!   its backlog, is reported (`rafty.replicate.away`, `destination away`), is never re-created, and
//!   drains when the root is back. `disable`/`enable`, `status --json`, `reconcile` for a destination
//!   added later, `restore-test`.
//! - Audit: flipped bytes, a truncated file and a deleted copy, in destinations (directories and S3)
//!   and in the library itself, and EIO from the FUSE "scratched disc" (`rafty-faultydisc`) serving a
//!   destination's copy and the library's: each reported with its verdict (exit 1), then mended by
//!   `--repair` (exit 0) from a copy that verifies, bytes equal again. The budget (`--percent` least
//!   recently verified first, `--older-than`, `--dest`), `STALE`, exit 2 for an unreadable ledger,
//!   and `--decode` on a video that was already damaged when the ledger first recorded it.
//! - A destination that fills up: reported, backlog kept, no object left under its name, drained once
//!   space is freed.
//!
//! The tests share the binary's broker and S3 server (a vhost and a bucket each); only the first
//! runs HandBrake.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rafty_core::names::EVENTS_EXCHANGE;
use rafty_testkit::s3::{S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY, shared_s3};
use rafty_testkit::{Env, FaultyDisc, fixture_iso, shared_broker, wait_for};
use serde_json::Value;

/// The prefix of every test bucket's keys (`s3://BUCKET/home`).
const PREFIX: &str = "home";
/// The name a non-ASCII image is submitted under.
const AMELIE: &str = "Amélie – Director's Cut.iso";

/// The image every test uses: one 12 s title (2.9 MB), cached across test binaries.
fn small_iso() -> PathBuf {
    fixture_iso("SMALL", &[12])
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn sha256_bytes(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Hidden files (temporary names) under `dir`.
fn hidden_under(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            Path::new(f)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// An RFC 3339 UTC time as a string that sorts by time (the fraction padded to nanoseconds).
fn sortable(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    match t.split_once('.') {
        Some((s, frac)) => format!("{s}.{frac:0<9}"),
        None => format!("{t}.000000000"),
    }
}

/// Where copies go.
enum Dest {
    Dir { name: String, root: PathBuf },
    S3 { name: String, bucket: String },
}

impl Dest {
    fn name(&self) -> &str {
        match self {
            Dest::Dir { name, .. } | Dest::S3 { name, .. } => name,
        }
    }
}

/// One test's library (an [`Env`]), its destinations, ledger and config.
struct World {
    env: Env,
    dests: Vec<Dest>,
    ledger: PathBuf,
    secret: PathBuf,
    /// Extra `[replicate]` lines (TOML).
    extra: String,
}

impl World {
    fn new(test: &str) -> World {
        let env = Env::new(shared_broker(), test);
        std::fs::create_dir_all(&env.media_dir).unwrap();
        let secret = env.path().join("s3-secret");
        std::fs::write(&secret, format!("{S3_SECRET_ACCESS_KEY}\n")).unwrap();
        World {
            ledger: env.path().join("state/ledger.json"),
            env,
            dests: Vec::new(),
            secret,
            extra: "probe-interval = \"1s\"\naway-after = \"2s\"\n".to_owned(),
        }
    }

    /// A directory destination whose root exists (a mounted disk), at `<test>/<name>/rafty`.
    fn add_dir(&mut self, name: &str) -> PathBuf {
        let root = self.env.path().join(name).join("rafty");
        std::fs::create_dir_all(&root).unwrap();
        self.add_dir_at(name, &root);
        root
    }

    fn add_dir_at(&mut self, name: &str, root: &Path) {
        self.dests.push(Dest::Dir {
            name: name.to_owned(),
            root: root.to_owned(),
        });
    }

    /// An S3 destination on a fresh bucket of the shared server.
    fn add_s3(&mut self, name: &str) -> String {
        static BUCKETS: AtomicU32 = AtomicU32::new(0);
        let bucket = format!("rafty-{}-{}", name, BUCKETS.fetch_add(1, Ordering::SeqCst));
        shared_s3().create_bucket(&bucket);
        self.dests.push(Dest::S3 {
            name: name.to_owned(),
            bucket: bucket.clone(),
        });
        bucket
    }

    fn dest(&self, name: &str) -> &Dest {
        self.dests
            .iter()
            .find(|d| d.name() == name)
            .unwrap_or_else(|| panic!("no destination {name}"))
    }

    fn root(&self, name: &str) -> &Path {
        match self.dest(name) {
            Dest::Dir { root, .. } => root,
            Dest::S3 { .. } => panic!("{name} is not a directory"),
        }
    }

    /// The `[replicate]` section for these destinations, with `ledger` and `extra` lines.
    fn replicate_section(&self, ledger: &Path, extra: &str) -> String {
        let mut text = format!(
            "[replicate]\nledger = {}\n{extra}destinations = [\n",
            toml_str(&ledger.display().to_string())
        );
        for d in &self.dests {
            match d {
                Dest::Dir { name, root } => text.push_str(&format!(
                    "  {{ name = {}, url = {} }},\n",
                    toml_str(name),
                    toml_str(&format!("file://{}", root.display()))
                )),
                Dest::S3 { name, bucket } => text.push_str(&format!(
                    "  {{ name = {}, url = {}, endpoint = {}, region = {}, access-key-id = {}, \
                     secret-access-key-file = {}, allow-http = true }},\n",
                    toml_str(name),
                    toml_str(&format!("s3://{bucket}/{PREFIX}")),
                    toml_str(&shared_s3().endpoint()),
                    toml_str(S3_REGION),
                    toml_str(S3_ACCESS_KEY_ID),
                    toml_str(&self.secret.display().to_string()),
                )),
            }
        }
        text.push_str("]\n");
        text
    }

    /// (Re)write the test's `rafty.toml` (the one `raftyctl`, the worker and the replicator use).
    fn write_config(&self) -> PathBuf {
        self.write_config_as("rafty.toml", &self.ledger.clone(), &self.extra.clone())
    }

    /// Another config file of the same world, with another ledger path or `[replicate]` lines.
    fn write_config_as(&self, file: &str, ledger: &Path, extra: &str) -> PathBuf {
        let path = self.env.write_config(file, Some("nas"), &[]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&self.replicate_section(ledger, extra));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.env.raftyctl(args)
    }

    /// `raftyctl` that must succeed: its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "raftyctl {args:?} failed ({}): {}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `raftyctl replicate status --json`, by destination name.
    fn status(&self) -> BTreeMap<String, Value> {
        let v: Value = serde_json::from_str(&self.ctl_ok(&["replicate", "status", "--json"]))
            .expect("status --json is JSON");
        v["destinations"]
            .as_array()
            .expect("a destinations array")
            .iter()
            .map(|d| (d["name"].as_str().unwrap().to_owned(), d.clone()))
            .collect()
    }

    /// Start `rafty-replicate` (JSON log) and wait until every destination's consumer is connected
    /// (or held: `ready` destinations only).
    fn replicator(&self, ready: usize) -> Replicator {
        let n = std::fs::read_dir(self.env.path()).unwrap().count();
        let log = self.env.path().join(format!("replicate-{n}.log"));
        let child = Command::new(rafty_testkit::bin("rafty-replicate"))
            .arg("--config")
            .arg(self.env.config())
            .args(["--log-format", "json"])
            .env_remove("RAFTY_CONFIG")
            .env_remove("RAFTY_AMQP_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rafty-replicate");
        let mut r = Replicator { child, log };
        let start = Instant::now();
        while r
            .log()
            .matches("connected; waiting for copy requests")
            .count()
            < ready
        {
            assert!(r.running(), "rafty-replicate exited at start: {}", r.log());
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "rafty-replicate did not connect {ready} consumers within 30 s: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn ledger_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.ledger).expect("the ledger exists"))
            .expect("the ledger is JSON")
    }

    /// Where the library holds `key`.
    fn library_path(&self, key: &str) -> PathBuf {
        if let Some(rel) = key.strip_prefix("iso/") {
            self.env.iso_dir.join(rel)
        } else {
            self.env
                .media_dir
                .join(key.strip_prefix("media/").expect("a key"))
        }
    }

    /// The SHA-256 of the copy of `key` at `dest`, None when there is none.
    fn copy_sha(&self, dest: &str, key: &str) -> Option<String> {
        match self.dest(dest) {
            Dest::Dir { root, .. } => {
                let p = root.join(key);
                p.is_file().then(|| sha256_file(&p))
            }
            Dest::S3 { bucket, .. } => shared_s3()
                .get(bucket, &format!("{PREFIX}/{key}"))
                .map(|b| sha256_bytes(&b)),
        }
    }

    /// Every library key now: the images, and each video with its sidecar.
    fn library_keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = files_under(&self.env.iso_dir)
            .into_iter()
            .filter(|f| f.ends_with(".iso") && !f.starts_with('.'))
            .map(|f| format!("iso/{f}"))
            .collect();
        keys.extend(
            files_under(&self.env.media_dir)
                .into_iter()
                .filter(|f| !f.starts_with('.'))
                .map(|f| format!("media/{f}")),
        );
        keys
    }

    /// Wait until each of `dests` holds each of `keys` with the library's SHA-256.
    fn wait_replicated(&self, keys: &[String], dests: &[&str], timeout: Duration) {
        let want: BTreeMap<&String, String> = keys
            .iter()
            .map(|k| (k, sha256_file(&self.library_path(k))))
            .collect();
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for d in dests {
                for (k, sha) in &want {
                    if self.copy_sha(d, k).as_ref() != Some(sha) {
                        missing.push(format!("{d}:{k}"));
                    }
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "after {timeout:?} these copies are missing or differ from the library: {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for World {
    /// A failed test shows the end of every log of its directory.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.env.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} (last 60 lines)\n{}",
                log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// A running `rafty-replicate`; killed when dropped.
struct Replicator {
    child: Child,
    log: PathBuf,
}

impl Replicator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its JSON log records' `fields` (with `level` added).
    fn records(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                let mut f = v["fields"].clone();
                f["level"] = v["level"].clone();
                f
            })
            .collect()
    }

    /// Its `copy verified` records: (dest, key, bytes).
    fn verified(&self) -> Vec<(String, String, u64)> {
        self.records()
            .into_iter()
            .filter(|f| f["message"] == "copy verified")
            .map(|f| {
                (
                    f["dest"].as_str().unwrap_or_default().to_owned(),
                    f["key"].as_str().unwrap_or_default().to_owned(),
                    f["bytes"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// SIGTERM, then its exit status.
    fn stop(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "rafty-replicate did not stop within 30 s of SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy the fixture into the library under `name` and queue it with `raftyctl submit --checksum`;
/// returns (its key, the job id).
fn submit(w: &World, name: &str, extra: &[&str]) -> (String, String) {
    let iso = w.env.add_iso(&small_iso(), name);
    let mut args = vec!["--checksum"];
    args.extend_from_slice(extra);
    let id = w.env.submit(&iso, &args);
    (format!("iso/{name}"), id)
}

/// The keys of a `done` event's video and its sidecar.
fn output_keys(w: &World, done: &Value) -> (String, String) {
    let path = PathBuf::from(done["outputs"][0]["path"].as_str().expect("an output path"));
    let rel = path
        .strip_prefix(&w.env.media_dir)
        .unwrap_or_else(|_| panic!("{} is not under the media directory", path.display()));
    let video = format!("media/{}", rel.display());
    (video.clone(), format!("{video}.rafty.json"))
}

#[test]
fn images_and_videos_reach_every_destination_and_the_backlog_survives_a_stopped_replicator_and_an_absent_disk()
 {
    let mut w = World::new("replicate");
    let usb = w.add_dir("usb");
    w.add_dir("usb2");
    let bucket = w.add_s3("cloud");
    w.write_config();
    let all = ["usb", "usb2", "cloud"];
    let amqp = w.env.amqp();
    let tap = amqp.tap();
    let away_tap = amqp.tap_on(EVENTS_EXCHANGE, "rafty.replicate.#");
    let mut rep = w.replicator(3);
    let worker = w.env.worker(&w.env.config(), &[]);
    let mut worker = worker;
    worker.wait_log("connected; waiting for jobs", Duration::from_secs(30));

    // 1. A real image with spaces and non-ASCII in its name, through a real worker.
    let (iso_key, id) = submit(&w, AMELIE, &[]);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(180), |v| {
        v["id"] == id.as_str()
    });
    let (video_key, sidecar_key) = output_keys(&w, &done);
    assert!(
        video_key.starts_with("media/Amélie – Director's Cut"),
        "{video_key}"
    );
    let first = vec![iso_key.clone(), video_key.clone(), sidecar_key.clone()];
    w.wait_replicated(&first, &all, Duration::from_secs(60));

    // The worker hashed the video before putting it in place: the sidecar and the event say so.
    let video_sha = sha256_file(&w.library_path(&video_key));
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(w.library_path(&sidecar_key)).unwrap()).unwrap();
    assert_eq!(sidecar["output-sha256"], video_sha.as_str(), "{sidecar}");
    assert_eq!(done["outputs"][0]["sha256"], video_sha.as_str(), "{done}");

    // The ledger: each object's kind, size and SHA-256, and a verified copy in every place.
    let ledger = w.ledger_json();
    assert_eq!(ledger["version"], 1, "{ledger}");
    for (key, kind) in [
        (&iso_key, "image"),
        (&video_key, "video"),
        (&sidecar_key, "sidecar"),
    ] {
        let o = &ledger["objects"][key.as_str()];
        let path = w.library_path(key);
        assert_eq!(o["kind"], kind, "{key}: {o}");
        assert_eq!(o["sha256"], sha256_file(&path).as_str(), "{key}: {o}");
        assert_eq!(
            o["size"],
            std::fs::metadata(&path).unwrap().len(),
            "{key}: {o}"
        );
        assert!(o["recorded-at"].is_string(), "{key}: {o}");
        for place in ["library", "usb", "usb2", "cloud"] {
            assert!(
                o["copies"][place]["verified-at"].is_string(),
                "{key} has no verified copy at {place}: {o}"
            );
        }
    }
    // One `copy verified` line per object and destination, with the object's size.
    let verified = rep.verified();
    for d in all {
        for k in &first {
            let size = std::fs::metadata(w.library_path(k)).unwrap().len();
            assert!(
                verified.contains(&(d.to_owned(), k.clone(), size)),
                "no `copy verified dest={d} key={k} bytes={size}` in {verified:?}"
            );
        }
    }
    // The ledger goes with the copies; no temporary name is left behind; the bucket holds exactly
    // the three objects and the ledger.
    for d in ["usb", "usb2"] {
        let root = w.root(d).to_owned();
        wait_for(
            &format!("{d}/ledger.json to list every object"),
            Duration::from_secs(20),
            || {
                let l: Value =
                    serde_json::from_slice(&std::fs::read(root.join("ledger.json")).ok()?).ok()?;
                first
                    .iter()
                    .all(|k| l["objects"][k.as_str()]["sha256"].is_string())
                    .then_some(())
            },
        );
        assert_eq!(hidden_under(&root), Vec::<String>::new(), "{d}");
    }
    let listed: Vec<String> = shared_s3()
        .list(&bucket, &format!("{PREFIX}/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want: Vec<String> = first.iter().map(|k| format!("{PREFIX}/{k}")).collect();
    want.push(format!("{PREFIX}/ledger.json"));
    want.sort();
    assert_eq!(listed, want, "the bucket's objects");
    let status = w.status();
    assert_eq!(status.len(), 3, "{status:?}");
    for d in all {
        let s = &status[d];
        assert_eq!(s["queue"], format!("rafty.replicate.{d}").as_str(), "{s}");
        assert_eq!(s["waiting"], 0, "{s}");
        assert_eq!(s["consumers"], 1, "{s}");
        assert_eq!(s["enabled"], true, "{s}");
        assert_eq!(s["verified"], 3, "{s}");
        assert_eq!(s["objects"], 3, "{s}");
    }
    assert!(
        status["cloud"]["url"]
            .as_str()
            .unwrap()
            .starts_with("s3://"),
        "{:?}",
        status["cloud"]
    );

    // 2. The replicator stops (SIGTERM: exit 0) while a job finishes; its queues keep the backlog,
    // and a new replicator catches up.
    let status = rep.stop();
    assert!(status.success(), "SIGTERM: {status}; {}", rep.log());
    let (iso2, id2) = submit(&w, "Second Disc.iso", &[]);
    let done2 = amqp.wait_event(&tap, "done", Duration::from_secs(180), |v| {
        v["id"] == id2.as_str()
    });
    let (video2, sidecar2) = output_keys(&w, &done2);
    let status = w.status();
    for d in all {
        assert_eq!(
            (
                status[d]["waiting"].as_u64(),
                status[d]["consumers"].as_u64()
            ),
            (Some(2), Some(0)),
            "{d}: the image job and the done event wait for the stopped replicator: {}",
            status[d]
        );
        assert_eq!(w.copy_sha(d, &iso2), None, "{d} has {iso2} already");
    }
    let mut rep = w.replicator(3);
    let second = vec![iso2.clone(), video2.clone(), sidecar2.clone()];
    w.wait_replicated(&second, &all, Duration::from_secs(60));

    // 3. A destination whose disk is unplugged (its root gone) holds its backlog, is reported once
    // away longer than away-after, is never re-created, and drains when the disk is back.
    let unplugged = usb.with_file_name("rafty-unplugged");
    std::fs::rename(&usb, &unplugged).unwrap();
    let (iso3, id3) = submit(&w, "Third.iso", &[]);
    let done3 = amqp.wait_event(&tap, "done", Duration::from_secs(180), |v| {
        v["id"] == id3.as_str()
    });
    let (video3, sidecar3) = output_keys(&w, &done3);
    let third = vec![iso3.clone(), video3.clone(), sidecar3.clone()];
    w.wait_replicated(&third, &["usb2", "cloud"], Duration::from_secs(60));
    let away = amqp.wait_event(&away_tap, "away", Duration::from_secs(30), |v| {
        v["destination"] == "usb"
    });
    assert!(away["since"].is_string(), "{away}");
    wait_for(
        "a `destination away` warning",
        Duration::from_secs(10),
        || {
            rep.records()
                .iter()
                .any(|f| f["message"] == "destination away" && f["level"] == "WARN")
                .then_some(())
        },
    );
    wait_for(
        "usb's backlog to wait in its queue, its consumer held",
        Duration::from_secs(10),
        || {
            let s = &w.status()["usb"];
            (s["waiting"] == 2 && s["consumers"] == 0).then_some(())
        },
    );
    assert!(!usb.exists(), "the replicator created the missing root");
    std::fs::rename(&unplugged, &usb).unwrap();
    w.wait_replicated(&third, &["usb"], Duration::from_secs(30));
    wait_for("usb's queue to drain", Duration::from_secs(10), || {
        let s = &w.status()["usb"];
        (s["waiting"] == 0 && s["consumers"] == 1).then_some(())
    });

    // 4. `disable` holds a destination (its backlog waits), `enable` drains it. No worker now: the
    // image is only copied.
    drop(worker);
    w.ctl_ok(&["replicate", "disable", "usb2"]);
    assert_eq!(w.ledger_json()["disabled"], serde_json::json!(["usb2"]));
    wait_for("usb2's consumer to stop", Duration::from_secs(10), || {
        let s = &w.status()["usb2"];
        (s["enabled"] == false && s["consumers"] == 0).then_some(())
    });
    let (iso4, _) = submit(&w, "Fourth.iso", &[]);
    w.wait_replicated(
        std::slice::from_ref(&iso4),
        &["usb", "cloud"],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        w.copy_sha("usb2", &iso4),
        None,
        "a disabled destination copied"
    );
    assert_eq!(w.status()["usb2"]["waiting"], 1);
    w.ctl_ok(&["replicate", "enable", "usb2"]);
    w.wait_replicated(
        std::slice::from_ref(&iso4),
        &["usb2"],
        Duration::from_secs(30),
    );

    // 5. A destination added later gets everything through `reconcile`, and nothing twice.
    let status = rep.stop();
    assert!(status.success(), "{status}");
    let late = w.add_dir("late");
    w.write_config();
    let _rep = w.replicator(4);
    let lines = w.ctl_ok(&["replicate", "reconcile", "late"]);
    let queued: BTreeSet<String> = lines
        .lines()
        .map(|l| {
            let (dest, key) = l.split_once('\t').unwrap_or_else(|| panic!("{l:?}"));
            assert_eq!(dest, "late", "{l:?}");
            key.to_owned()
        })
        .collect();
    let library = w.library_keys();
    assert_eq!(library.len(), 10, "{library:?}");
    assert_eq!(queued, library, "reconcile queues every library object");
    let keys: Vec<String> = library.iter().cloned().collect();
    w.wait_replicated(&keys, &["late"], Duration::from_secs(60));
    assert_eq!(hidden_under(&late), Vec::<String>::new());
    wait_for(
        "the ledger to record every copy at late",
        Duration::from_secs(10),
        || {
            let l = w.ledger_json();
            keys.iter()
                .all(|k| l["objects"][k.as_str()]["copies"]["late"]["verified-at"].is_string())
                .then_some(())
        },
    );
    assert_eq!(w.ctl_ok(&["replicate", "reconcile", "late"]), "");
    assert_eq!(w.ctl_ok(&["replicate", "reconcile"]), "");

    // 6. A restore test brings back a random object from a random destination, verified and played.
    for _ in 0..3 {
        let out = w.ctl_ok(&["restore-test"]);
        assert!(
            out.starts_with("restored ") && out.contains(" from "),
            "{out}"
        );
    }
    let out: Value =
        serde_json::from_str(&w.ctl_ok(&["restore-test", "--dest", "cloud", "--json"])).unwrap();
    assert_eq!(out["place"], "cloud", "{out}");
    assert_eq!(out["sha256-ok"], true, "{out}");
    assert_eq!(out["played"], "ok", "{out}");
}

/// A copy with one byte in its middle flipped (same size).
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// A short real video (ffmpeg's test pattern and a tone) and a sidecar for it.
fn make_video(w: &World, name: &str) {
    let video = w.env.media_dir.join(name);
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=2",
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=2"])
        .args(["-c:v", "mpeg4", "-c:a", "aac", "-shortest"])
        .arg(&video)
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg: {}", stderr(&out));
    write_sidecar(w, name, &video);
}

fn write_sidecar(w: &World, name: &str, video: &Path) {
    let sidecar = rafty_core::output::Sidecar {
        job_id: "00000000-0000-4000-8000-000000000016".into(),
        source_path: w.env.iso_dir.join("Disc One.iso"),
        source_size: 1,
        source_sha256: None,
        source_label: None,
        title: 1,
        preset: "Very Fast 480p30".into(),
        handbrake: "HandBrake 1.6.1".into(),
        output: name.into(),
        output_size: std::fs::metadata(video).unwrap().len(),
        output_sha256: Some(sha256_file(video)),
        output_duration_secs: 2.0,
        title_duration_secs: 2.0,
        host: "nas".into(),
        finished_at: "2026-12-03T00:00:00Z".into(),
    };
    std::fs::write(
        rafty_core::output::sidecar_path(video),
        serde_json::to_vec_pretty(&sidecar).unwrap(),
    )
    .unwrap();
}

/// `raftyctl audit ARGS` as (exit code, findings (VERDICT, PLACE, KEY) → DETAIL, REPAIRED lines
/// (PLACE, KEY) → FROM, stdout, stderr).
struct Audit {
    code: i32,
    findings: BTreeMap<(String, String, String), String>,
    repaired: BTreeMap<(String, String), String>,
    stdout: String,
    stderr: String,
}

fn audit(w: &World, args: &[&str]) -> Audit {
    let mut full = vec!["audit"];
    full.extend_from_slice(args);
    let out = w.ctl(&full);
    let text = stdout(&out);
    let mut findings = BTreeMap::new();
    let mut repaired = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(
            f.len(),
            4,
            "not VERDICT<TAB>PLACE<TAB>KEY<TAB>DETAIL: {line:?}"
        );
        if f[0] == "REPAIRED" {
            let from = f[3]
                .strip_prefix("from ")
                .unwrap_or_else(|| panic!("{line:?}"));
            repaired.insert((f[1].to_owned(), f[2].to_owned()), from.to_owned());
        } else {
            findings.insert(
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()),
                f[3].to_owned(),
            );
        }
    }
    Audit {
        code: out.status.code().unwrap_or(-1),
        findings,
        repaired,
        stdout: text,
        stderr: stderr(&out),
    }
}

fn audit_json(w: &World, args: &[&str]) -> (i32, Value) {
    let mut full = vec!["audit", "--json"];
    full.extend_from_slice(args);
    let out = w.ctl(&full);
    let v: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("audit --json: {e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap_or(-1), v)
}

/// Every copy's `verified-at` in the ledger: (key, place) → sortable time.
fn verified_times(w: &World) -> BTreeMap<(String, String), String> {
    let l = w.ledger_json();
    let mut out = BTreeMap::new();
    for (k, o) in l["objects"].as_object().unwrap() {
        for (p, c) in o["copies"].as_object().unwrap() {
            out.insert(
                (k.clone(), p.clone()),
                sortable(c["verified-at"].as_str().unwrap()),
            );
        }
    }
    out
}

fn key(v: &str, p: &str, k: &str) -> (String, String, String) {
    (v.to_owned(), p.to_owned(), k.to_owned())
}

#[test]
fn audit_reports_damage_in_every_place_with_its_verdict_and_repair_mends_it_from_a_good_copy() {
    let mut w = World::new("audit");
    let usb = w.add_dir("usb");
    let usb2 = w.add_dir("usb2");
    let bucket = w.add_s3("cloud");
    w.write_config();
    let s3 = shared_s3();

    // The library: two different images, a real video and its sidecar, queued by `reconcile`.
    let one = w.env.add_iso(&small_iso(), "Disc One.iso");
    let two = w.env.iso_dir.join("Disc Two.iso");
    let mut bytes = std::fs::read(small_iso()).unwrap();
    bytes.extend(std::iter::repeat_n(0x5a, 64 * 1024));
    std::fs::write(&two, &bytes).unwrap();
    make_video(&w, "Clip.mkv");
    let keys: Vec<String> = [
        "iso/Disc One.iso",
        "iso/Disc Two.iso",
        "media/Clip.mkv",
        "media/Clip.mkv.rafty.json",
    ]
    .map(str::to_owned)
    .to_vec();
    let original: BTreeMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), sha256_file(&w.library_path(k))))
        .collect();
    let mut rep = w.replicator(3);
    let queued = w.ctl_ok(&["replicate", "reconcile"]);
    assert_eq!(
        queued.lines().count(),
        12,
        "4 objects × 3 destinations: {queued}"
    );
    w.wait_replicated(&keys, &["usb", "usb2", "cloud"], Duration::from_secs(60));
    wait_for(
        "the ledger to record all 12 copies",
        Duration::from_secs(10),
        || {
            let t = verified_times(&w);
            (t.len() == 16).then_some(())
        },
    );
    assert!(rep.stop().success());

    // Clean: exit 0, nothing on stdout, every copy read.
    let a = audit(&w, &[]);
    assert_eq!((a.code, a.stdout.as_str()), (0, ""), "{}", a.stderr);
    let (code, j) = audit_json(&w, &[]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(
        (&j["checked"], &j["ok"], &j["not-checked"]),
        (
            &serde_json::json!(16),
            &serde_json::json!(16),
            &serde_json::json!(0)
        ),
        "{j}"
    );
    assert_eq!(j["findings"], serde_json::json!([]), "{j}");

    // The budget: `--percent 25` reads the quarter least recently verified, and the next run the
    // next quarter; `--older-than` skips what was verified since; `--dest` reads one place.
    let mut seen = BTreeSet::new();
    for run in 0..4 {
        let before = verified_times(&w);
        let mut oldest: Vec<(&String, &(String, String))> =
            before.iter().map(|(c, t)| (t, c)).collect();
        oldest.sort();
        let oldest: BTreeSet<(String, String)> =
            oldest.iter().take(4).map(|(_, c)| (*c).clone()).collect();
        let (code, j) = audit_json(&w, &["--percent", "25"]);
        assert_eq!(code, 0, "{j}");
        assert_eq!(
            (&j["checked"], &j["not-checked"]),
            (&4.into(), &12.into()),
            "{j}"
        );
        let after = verified_times(&w);
        let read: BTreeSet<(String, String)> = after
            .iter()
            .filter(|(c, t)| before.get(*c) != Some(*t))
            .map(|(c, _)| c.clone())
            .collect();
        assert_eq!(
            read, oldest,
            "run {run}: not the least recently verified quarter"
        );
        assert!(
            read.is_disjoint(&seen),
            "run {run} read a copy again: {read:?}"
        );
        seen.extend(read);
    }
    assert_eq!(seen.len(), 16, "four quarter runs cover every copy");
    let (code, j) = audit_json(&w, &["--older-than", "1h"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(
        (&j["checked"], &j["not-checked"]),
        (&0.into(), &16.into()),
        "{j}"
    );
    let (_, j) = audit_json(&w, &["--dest", "usb2"]);
    assert_eq!((&j["checked"], &j["ok"]), (&4.into(), &4.into()), "{j}");

    // STALE: with a max age of 1 s, a run that reaches 2 of 16 copies reports the other 14.
    std::thread::sleep(Duration::from_millis(1500));
    let stale_cfg = w.write_config_as("stale.toml", &w.ledger.clone(), "max-age = \"1s\"\n");
    let out = w
        .env
        .raftyctl_with(&stale_cfg, &["audit", "--json", "--percent", "10"]);
    let j: Value = serde_json::from_str(&stdout(&out)).expect("audit --json");
    assert_eq!(out.status.code(), Some(1), "{j}");
    let findings = j["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 14, "{j}");
    assert!(findings.iter().all(|f| f["verdict"] == "STALE"), "{j}");
    assert_eq!(j["not-checked"], 14, "{j}");

    // An unreadable ledger: the audit itself failed, exit 2.
    let bad = w.env.path().join("bad-ledger.json");
    std::fs::write(&bad, "this is not a ledger").unwrap();
    let bad_cfg = w.write_config_as("bad.toml", &bad, "");
    let out = w.env.raftyctl_with(&bad_cfg, &["audit"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad-ledger.json"), "{}", stderr(&out));

    // Damage in every place. Destinations: bytes flipped (usb's image, the bucket's other image),
    // a truncated video (usb2), a deleted sidecar (the bucket), EIO (usb2's image is served by
    // the FUSE scratched disc). The library: flipped video, truncated sidecar, deleted image, EIO.
    flip(&usb.join("iso/Disc One.iso"));
    let s3_two = format!("{PREFIX}/iso/Disc Two.iso");
    let mut two_bytes = s3.get(&bucket, &s3_two).expect("the bucket has Disc Two");
    two_bytes[1000] ^= 0x01;
    s3.put(&bucket, &s3_two, &two_bytes);
    let clip2 = usb2.join("media/Clip.mkv");
    let clip_len = std::fs::metadata(&clip2).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&clip2)
        .unwrap()
        .set_len(clip_len / 2)
        .unwrap();
    s3.delete(&bucket, &format!("{PREFIX}/media/Clip.mkv.rafty.json"));
    flip(&w.library_path("media/Clip.mkv"));
    let side = w.library_path("media/Clip.mkv.rafty.json");
    std::fs::File::options()
        .write(true)
        .open(&side)
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::remove_file(&two).unwrap();
    // Sectors 300-310 of the image fail with EIO; each copy is a symlink to a scratched disc.
    let scratched_usb2 = FaultyDisc::start(&small_iso(), &[(300, 310)]);
    let scratched_lib = FaultyDisc::start(&small_iso(), &[(300, 310)]);
    let usb2_one = usb2.join("iso/Disc One.iso");
    std::fs::remove_file(&usb2_one).unwrap();
    std::os::unix::fs::symlink(scratched_usb2.path(), &usb2_one).unwrap();
    std::fs::remove_file(&one).unwrap();
    std::os::unix::fs::symlink(scratched_lib.path(), &one).unwrap();

    let expected: BTreeSet<(String, String, String)> = [
        key("CORRUPT", "usb", "iso/Disc One.iso"),
        key("UNREADABLE", "usb2", "iso/Disc One.iso"),
        key("UNREADABLE", "library", "iso/Disc One.iso"),
        key("CORRUPT", "cloud", "iso/Disc Two.iso"),
        key("MISSING", "library", "iso/Disc Two.iso"),
        key("CORRUPT", "usb2", "media/Clip.mkv"),
        key("CORRUPT", "library", "media/Clip.mkv"),
        key("MISSING", "cloud", "media/Clip.mkv.rafty.json"),
        key("CORRUPT", "library", "media/Clip.mkv.rafty.json"),
    ]
    .into_iter()
    .collect();
    let a = audit(&w, &[]);
    assert_eq!(a.code, 1, "{}{}", a.stdout, a.stderr);
    let found: BTreeSet<_> = a.findings.keys().cloned().collect();
    assert_eq!(found, expected, "{}", a.stdout);
    assert!(a.repaired.is_empty(), "{}", a.stdout);
    let truncated = &a.findings[&key("CORRUPT", "usb2", "media/Clip.mkv")];
    assert!(
        truncated.contains(&(clip_len / 2).to_string()),
        "the detail gives the size found: {truncated}"
    );
    for place in ["usb2", "library"] {
        let d = &a.findings[&key("UNREADABLE", place, "iso/Disc One.iso")];
        assert!(
            d.contains("Input/output error") || d.contains("os error 5"),
            "{place}: {d}"
        );
    }
    let (code, j) = audit_json(&w, &[]);
    assert_eq!(code, 1, "{j}");
    assert_eq!((&j["checked"], &j["ok"]), (&16.into(), &7.into()), "{j}");
    let json_found: BTreeSet<_> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["repaired"], false, "{f}");
            assert!(f["repaired-from"].is_null(), "{f}");
            key(
                f["verdict"].as_str().unwrap(),
                f["place"].as_str().unwrap(),
                f["key"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(json_found, expected, "{j}");

    // --repair mends every finding from a place whose copy verifies, then exits 0.
    let damaged: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(_, p, k)| (p.clone(), k.clone()))
        .collect();
    let a = audit(&w, &["--repair"]);
    assert_eq!(a.code, 0, "{}{}", a.stdout, a.stderr);
    let found: BTreeSet<_> = a.findings.keys().cloned().collect();
    assert_eq!(found, expected, "{}", a.stdout);
    let mended: BTreeSet<(String, String)> = a.repaired.keys().cloned().collect();
    assert_eq!(mended, damaged, "every finding REPAIRED: {}", a.stdout);
    for ((place, k), from) in &a.repaired {
        assert_ne!(from, place, "{k}");
        assert!(
            ["library", "usb", "usb2", "cloud"].contains(&from.as_str()),
            "{k}: from {from}"
        );
    }
    // Each REPAIRED line follows its finding.
    let lines: Vec<&str> = a.stdout.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("REPAIRED\t") {
            let (place, k) = rest.split_once('\t').unwrap();
            let k = k.split('\t').next().unwrap();
            assert!(
                i > 0 && lines[i - 1].contains(&format!("\t{place}\t{k}\t")),
                "REPAIRED line {i} does not follow its finding: {}",
                a.stdout
            );
        }
    }
    drop(scratched_usb2);
    drop(scratched_lib);
    for k in &keys {
        let lib = w.library_path(k);
        assert!(
            !std::fs::symlink_metadata(&lib).unwrap().is_symlink(),
            "{k}: the library's copy is still the scratched disc"
        );
        assert_eq!(sha256_file(&lib), original[k], "library {k}");
        for d in ["usb", "usb2", "cloud"] {
            assert_eq!(w.copy_sha(d, k).as_ref(), Some(&original[k]), "{d} {k}");
        }
    }
    for root in [&usb, &usb2] {
        assert_eq!(
            hidden_under(root),
            Vec::<String>::new(),
            "{}",
            root.display()
        );
    }
    let a = audit(&w, &[]);
    assert_eq!((a.code, a.stdout.as_str()), (0, ""), "{}", a.stderr);

    // --decode: a video already damaged when the ledger first recorded it hashes right, and only
    // decoding it shows it cannot be played; --repair has no better copy for it.
    let broken = w.env.media_dir.join("Broken.mkv");
    let junk: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&broken, &junk).unwrap();
    write_sidecar(&w, "Broken.mkv", &broken);
    let _rep = w.replicator(3);
    let queued = w.ctl_ok(&["replicate", "reconcile", "usb"]);
    assert_eq!(queued.lines().count(), 2, "{queued}");
    w.wait_replicated(
        &[
            "media/Broken.mkv".to_owned(),
            "media/Broken.mkv.rafty.json".to_owned(),
        ],
        &["usb"],
        Duration::from_secs(30),
    );
    let a = audit(&w, &["--dest", "usb"]);
    assert_eq!(
        (a.code, a.stdout.as_str()),
        (0, ""),
        "it hashes right: {}",
        a.stderr
    );
    let a = audit(&w, &["--dest", "usb", "--decode"]);
    assert_eq!(a.code, 1, "{}{}", a.stdout, a.stderr);
    let found: BTreeSet<_> = a.findings.keys().cloned().collect();
    assert_eq!(
        found,
        [key("UNPLAYABLE", "usb", "media/Broken.mkv")]
            .into_iter()
            .collect(),
        "{}",
        a.stdout
    );
    let a = audit(&w, &["--dest", "usb", "--decode", "--repair"]);
    assert_eq!(a.code, 1, "an unplayable copy is not mended: {}", a.stdout);
    assert!(a.repaired.is_empty(), "{}", a.stdout);
}

/// A small ext4 file system (no blocks reserved for root) on a loop device, mounted for the test;
/// unmounted on drop.
struct SmallFs {
    mount: tempfile::TempDir,
    _image: tempfile::NamedTempFile,
}

impl SmallFs {
    fn new(bytes: u64) -> SmallFs {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(bytes).unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image.path())
            .output()
            .expect("mkfs.ext4 (apt-get install e2fsprogs)");
        assert!(out.status.success(), "mkfs.ext4: {}", stderr(&out));
        let mount = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image.path())
            .arg(mount.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o loop (the tests run as root): {}",
            stderr(&out)
        );
        SmallFs {
            mount,
            _image: image,
        }
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(self.path()).unwrap();
        s.blocks_free() * s.fragment_size()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

#[test]
fn a_destination_that_fills_up_keeps_its_backlog_and_drains_once_space_is_freed() {
    let mut w = World::new("full");
    let fs = SmallFs::new(16 << 20);
    let small = fs.path().join("rafty");
    std::fs::create_dir(&small).unwrap();
    w.add_dir_at("small", &small);
    w.add_dir("usb");
    w.write_config();
    let amqp = w.env.amqp();
    let away_tap = amqp.tap_on(EVENTS_EXCHANGE, "rafty.replicate.#");
    let rep = w.replicator(2);

    // Leave 1 MiB free: the 2.9 MB image cannot fit.
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x42u8; 1 << 20];
        let mut left = fs.free().saturating_sub(1 << 20);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        f.sync_all().unwrap();
    }
    assert!(fs.free() < 2 << 20, "{} bytes free", fs.free());

    let (iso, _) = submit(&w, "Big One.iso", &[]);
    w.wait_replicated(
        std::slice::from_ref(&iso),
        &["usb"],
        Duration::from_secs(30),
    );
    wait_for(
        "the full destination to be reported",
        Duration::from_secs(20),
        || {
            rep.records()
                .iter()
                .any(|f| {
                    f["level"] == "WARN"
                        && f["dest"] == "small"
                        && f.to_string().contains("No space left on device")
                })
                .then_some(())
        },
    );
    let away = amqp.wait_event(&away_tap, "away", Duration::from_secs(20), |v| {
        v["destination"] == "small"
    });
    assert!(
        away["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left"),
        "{away}"
    );
    wait_for(
        "the backlog to wait in small's queue",
        Duration::from_secs(10),
        || (w.status()["small"]["waiting"] == 1).then_some(()),
    );
    // For a few probe intervals: never an object under its name, only (removed) temporary names.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let named: Vec<String> = files_under(&small)
            .into_iter()
            .filter(|f| {
                !Path::new(f)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with('.')
                    && f != "ledger.json"
            })
            .collect();
        assert_eq!(named, Vec::<String>::new(), "a partial copy under its name");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.ledger_json()["objects"][iso.as_str()]["copies"]["small"].is_null(),
        "the ledger records a copy the full disk could not take"
    );

    std::fs::remove_file(&filler).unwrap();
    w.wait_replicated(
        std::slice::from_ref(&iso),
        &["small"],
        Duration::from_secs(30),
    );
    wait_for("small's queue to drain", Duration::from_secs(10), || {
        (w.status()["small"]["waiting"] == 0).then_some(())
    });
    assert_eq!(
        hidden_under(&small),
        Vec::<String>::new(),
        "a temporary file left"
    );
}

#[test]
fn a_data_disc_image_queued_by_submit_is_replicated_too() {
    // rip and `raftyctl submit` queue every image as `rafty.rip.iso.<media>`; a data disc's image
    // (`--media data`) is part of the library like any other.
    let mut w = World::new("data");
    w.add_dir("usb");
    w.write_config();
    let _rep = w.replicator(1);
    let (iso, _) = submit(&w, "Photos 2009.iso", &["--media", "data"]);
    w.wait_replicated(&[iso], &["usb"], Duration::from_secs(30));
}
