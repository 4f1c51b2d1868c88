//! Workers with no shared file system (issue 13): the real `rafty-store` on a NAS host, real
//! `transcoded` workers on hosts of their own that cannot see the NAS's directories, a real RabbitMQ
//! node on a broker host, real HandBrakeCLI, real HTTP across network namespaces.
//!
//! ```text
//!   root namespace: bridge 10.A.B.1 ── test process (events, queues, the NAS's directories, curl)
//!      ├── veth ── broker  10.A.B.2   one RabbitMQ node for the whole binary (a vhost per test)
//!      ├── veth ── nas     10.A.B.3   rafty-store (one per test, on a port of its own),
//!      │                              raftyctl submit; the test's ISO and media directories
//!      └── veth ── w-…     10.A.B.4…  transcoded, one host (or two) per test; its mount namespace
//!                                     hides the NAS's directories under an empty tmpfs
//! ```
//!
//! A worker's config holds its broker URL, the store's URL and its token file, and only such short
//! test settings as a test needs (stall-timeout 2 s, a scratch directory, the fast preset, a short
//! retry ladder). Slow links are `tc` token buckets on a worker's veth (download: the root side's
//! egress; upload: the worker's own `eth0`), so that a cut lands inside a transfer.
//!
//! The network and the broker are made once for the binary (the tests run two at a time, each on
//! its own worker hosts, store and vhost); a reaper removes them when the binary exits.

#[path = "support/net.rs"]
mod net;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use rafty_core::names::{DEAD_QUEUE, HEADER_ERROR, JOB_TYPE, RETRY_QUEUE_PREFIX, WORK_QUEUE};
use rafty_testkit::{
    Amqp, Env, EventTap, Worker, bin, fixture_iso, fixture_iso_chapters, job_properties, wait_for,
};
use serde_json::Value;

use net::Net;

/// Every host of the binary's network: the broker, the NAS, and the worker hosts (one or two per
/// test, so a cut or a slow link of one test touches no other).
const HOSTS: [&str; 18] = [
    "broker",
    "nas",
    "w-laptop",
    "w-dcut",
    "w-ucut",
    "w-flip",
    "w-down",
    "w-small",
    "w-token",
    "w-twin1",
    "w-twin2",
    "w-kill",
    "w-term",
    "w-short",
    "w-restart",
    "w-split1",
    "w-split2",
    "w-mixed",
];

/// A chunk of the store's image responses (server.rs `CHUNK`).
const CHUNK: u64 = 256 * 1024;

fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| Net::new(&HOSTS))
}

/// The disc image every test uses: one 12 s title (2.9 MB), cached across test binaries.
fn small_iso() -> PathBuf {
    fixture_iso("SMALL", &[12])
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A running `rafty-store` on the NAS host; killed when dropped.
struct StoreProc {
    child: Child,
    log: PathBuf,
}

impl StoreProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `image served` records of its JSON log: (image, from, asked, sent, complete).
    fn served(&self, image: &Path) -> Vec<(u64, u64, u64, bool)> {
        let image = image.display().to_string();
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["fields"].clone())
            .filter(|f| f["message"] == "image served" && f["image"] == image.as_str())
            .map(|f| {
                (
                    f["from"].as_u64().unwrap_or_default(),
                    f["asked"].as_u64().unwrap_or_default(),
                    f["sent"].as_u64().unwrap_or_default(),
                    f["complete"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NAS of one test: its vhost, ISO and media directories (the test's [`Env`]), the store's
/// config and token file, and the store when it runs.
struct Nas {
    env: Env,
    port: u16,
    config: PathBuf,
    token_file: PathBuf,
    store: Option<StoreProc>,
}

/// The token the tests' workers present (at least 16 characters).
const GOOD_TOKEN: &str = "laptop-token-0123456789abcdef";

impl Nas {
    /// A NAS whose store accepts [`GOOD_TOKEN`]; the store is not started yet.
    fn new(test: &str) -> Nas {
        static PORTS: AtomicU16 = AtomicU16::new(8800);
        let net = net();
        let env = Env::new(net.broker(), test);
        std::fs::create_dir_all(&env.media_dir).unwrap();
        let port = PORTS.fetch_add(1, Ordering::SeqCst);
        let token_file = env.path().join("store-tokens");
        std::fs::write(&token_file, format!("# the tests' workers\n{GOOD_TOKEN}\n")).unwrap();
        let addr = net.address("nas");
        let config = env.path().join("nas.toml");
        std::fs::write(
            &config,
            format!(
                "host = \"nas\"\n\
                 [broker]\nurl = \"{url}\"\n\
                 [rip]\niso-dir = {iso}\nspool-dir = {spool}\neject = \"never\"\n\
                 [transcode]\noutput-dir = {media}\nretry-delays = [\"2s\", \"4s\"]\n\
                 [store]\nlisten = \"{addr}:{port}\"\nurl = \"http://{addr}:{port}\"\n\
                 token-file = {tokens}\nstall-timeout = \"2s\"\n",
                url = env.url,
                iso = toml_path(&env.iso_dir),
                spool = toml_path(&env.path().join("spool")),
                media = toml_path(&env.media_dir),
                tokens = toml_path(&token_file),
            ),
        )
        .unwrap();
        Nas {
            env,
            port,
            config,
            token_file,
            store: None,
        }
    }

    /// The store's URL as workers reach it.
    fn url(&self) -> String {
        format!("http://{}:{}", net().address("nas"), self.port)
    }

    /// Start `rafty-store` on the NAS host (JSON log) and wait until it serves.
    fn start_store(&mut self) {
        let log = self.env.path().join(format!(
            "store-{}.log",
            std::fs::read_dir(self.env.path()).unwrap().count()
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", net().ns("nas")])
            .arg(bin("rafty-store"))
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json"])
            .env_remove("RAFTY_CONFIG")
            .env_remove("RAFTY_AMQP_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start rafty-store");
        let store = StoreProc { child, log };
        wait_for("rafty-store to serve", Duration::from_secs(20), || {
            store.log().contains("rafty-store serving").then_some(())
        });
        self.store = Some(store);
    }

    fn store(&self) -> &StoreProc {
        self.store.as_ref().expect("the store runs")
    }

    /// Put the test image in the NAS's ISO directory.
    fn add_image(&self, name: &str) -> PathBuf {
        self.env.add_iso(&small_iso(), name)
    }

    /// `raftyctl submit` on the NAS host (its config names the store): the job id.
    fn submit(&self, iso: &Path) -> String {
        self.submit_with(iso, &[])
    }

    /// [`Self::submit`] with more arguments.
    fn submit_with(&self, iso: &Path, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", net().ns("nas")])
            .arg(bin("raftyctl"))
            .arg("submit")
            .args(args)
            .arg(iso)
            .env("RAFTY_CONFIG", &self.config)
            .env_remove("RAFTY_AMQP_URL")
            .output()
            .expect("run raftyctl on the NAS");
        assert!(
            out.status.success(),
            "submit on the NAS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.split('\t').next().unwrap().trim().to_owned()
    }

    /// The video and sidecar of job `id`, after checking the library holds exactly one video and
    /// its sidecar and nothing else (no upload's temporary file).
    fn single_output(&self, id: &str) -> (String, Value) {
        let files = self.env.media_files();
        let sidecars: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(".rafty.json"))
            .collect();
        assert_eq!(sidecars.len(), 1, "one sidecar in the library: {files:?}");
        let video = sidecars[0].trim_end_matches(".rafty.json").to_owned();
        assert_eq!(
            files,
            vec![video.clone(), sidecars[0].clone()],
            "exactly one video and its sidecar in the library"
        );
        let sidecar: Value =
            serde_json::from_slice(&std::fs::read(self.env.media_dir.join(sidecars[0])).unwrap())
                .unwrap();
        assert_eq!(sidecar["job-id"], id, "{sidecar}");
        let size = std::fs::metadata(self.env.media_dir.join(&video))
            .unwrap()
            .len();
        assert!(size > 0, "an empty video");
        assert_eq!(sidecar["output-size"], size, "{sidecar}");
        (video, sidecar)
    }
}

impl Drop for Nas {
    /// A failed test shows the end of the store's and the workers' logs (its directory goes with it).
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
                "--- {} (last 40 lines)\n{}",
                log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// What a worker host's mount namespace does before `transcoded` starts: the NAS's directory ($1)
/// is covered by an empty tmpfs (this machine shares no file system with the NAS), so is
/// `/var/lib/rafty` (the default scratch and output directories stay inside the namespace), and with
/// a size in $2 the scratch directory $3 is a tmpfs that small.
const WORKER_HOST: &str = r#"set -e
mount -t tmpfs rafty-not-here "$1"
mkdir -p /var/lib/rafty
mount -t tmpfs rafty-var /var/lib/rafty
if [ -n "$2" ]; then mkdir -p "$3"; mount -t tmpfs -o "size=$2" rafty-scratch "$3"; fi
shift 3
exec "$@""#;

/// A worker host: its own directory (config, token, scratch), not shared with the NAS.
struct Laptop {
    host: &'static str,
    /// Removed with the host.
    _dir: tempfile::TempDir,
    config: PathBuf,
    scratch: PathBuf,
    small_scratch: Option<&'static str>,
}

impl Laptop {
    /// A worker config on `host`: the broker's URL (15 s heartbeats, so a cut of a few seconds
    /// keeps the job), the store's URL and token file; then `extra` lines of `[store]` and
    /// `[transcode]` (`None`: the short test settings).
    fn new(nas: &Nas, host: &'static str, extra: Option<(&str, &str)>) -> Laptop {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rafty-{host}-"))
            .tempdir()
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{GOOD_TOKEN}\n")).unwrap();
        let scratch = dir.path().join("scratch");
        let short = format!(
            "scratch-dir = {}\npreset = \"Very Fast 480p30\"\nretry-delays = [\"2s\", \"4s\"]\n",
            toml_path(&scratch)
        );
        let (store_extra, transcode_extra) =
            extra.unwrap_or(("stall-timeout = \"2s\"\n", short.as_str()));
        let config = dir.path().join("rafty.toml");
        std::fs::write(
            &config,
            format!(
                "host = \"{host}\"\n[broker]\nurl = \"{}\"\n[store]\nurl = \"{}\"\ntoken-file = {}\n{store_extra}[transcode]\n{transcode_extra}",
                nas.env.url.replace("?heartbeat=5", "?heartbeat=15"),
                nas.url(),
                toml_path(&token),
            ),
        )
        .unwrap();
        Laptop {
            host,
            config,
            scratch,
            small_scratch: None,
            _dir: dir,
        }
    }

    /// Start `transcoded` on the host and wait until it consumes.
    fn start(&self, nas: &Nas) -> Worker {
        let size = std::ffi::OsString::from(self.small_scratch.unwrap_or_default());
        let program = bin("transcoded");
        let args = [
            nas.env.path().as_os_str(),
            size.as_os_str(),
            self.scratch.as_os_str(),
            program.as_os_str(),
        ];
        let cmd = net().shell(self.host, WORKER_HOST, &args);
        let mut worker = nas.env.worker_with(cmd, &self.config, &[]);
        worker.wait_log("connected; waiting for jobs", Duration::from_secs(30));
        worker
    }

    /// Files (not directories) under the worker's scratch directory, as the worker sees it.
    fn scratch_files(&self, worker: &Worker) -> Vec<PathBuf> {
        let root = PathBuf::from(format!("/proc/{}/root", worker.pid()));
        let mut found = Vec::new();
        let mut todo = vec![root.join(self.scratch.strip_prefix("/").unwrap())];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                } else {
                    found.push(e.path());
                }
            }
        }
        found
    }

    /// The job directories under `<scratch>/remote` (as the worker sees them).
    fn remote_dirs(&self, worker: &Worker) -> Vec<String> {
        let root = PathBuf::from(format!("/proc/{}/root", worker.pid()));
        let remote = root
            .join(self.scratch.strip_prefix("/").unwrap())
            .join("remote");
        let mut names: Vec<String> = std::fs::read_dir(remote)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A token bucket on the host's link: `down` limits what reaches it (downloads), `up` what it
    /// sends (uploads); `None` removes the limit.
    fn shape(&self, down: Option<&str>, up: Option<&str>) {
        let net = net();
        let tbf = |rate: &str| {
            vec![
                "root".to_owned(),
                "tbf".to_owned(),
                "rate".to_owned(),
                rate.to_owned(),
                "burst".to_owned(),
                "16kb".to_owned(),
                "latency".to_owned(),
                "100ms".to_owned(),
            ]
        };
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", net.veth(self.host), "root"])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "exec", net.ns(self.host), "tc", "qdisc", "del"])
            .args(["dev", "eth0", "root"])
            .output();
        if let Some(rate) = down {
            let out = Command::new("tc")
                .args(["qdisc", "add", "dev", net.veth(self.host)])
                .args(tbf(rate))
                .output()
                .expect("run tc (iproute2)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(rate) = up {
            let out = Command::new("ip")
                .args(["netns", "exec", net.ns(self.host), "tc", "qdisc", "add"])
                .args(["dev", "eth0"])
                .args(tbf(rate))
                .output()
                .expect("run tc (iproute2)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Every event seen so far for job `id` whose routing key ends with `.kind`.
fn events_of(amqp: &Amqp, tap: &EventTap, kind: &str, id: &str) -> Vec<Value> {
    let suffix = format!(".{kind}");
    amqp.drain_events(tap)
        .into_iter()
        .filter(|(k, v)| k.ends_with(&suffix) && v["id"] == id)
        .map(|(_, v)| v)
        .collect()
}

fn transfers(amqp: &Amqp, tap: &EventTap, id: &str, direction: &str) -> Vec<Value> {
    events_of(amqp, tap, "transfer", id)
        .into_iter()
        .filter(|v| v["direction"] == direction)
        .collect()
}

/// The rates (bytes/s) the transfer events of one direction reported, as "x.x MB/s" for the log.
fn rates(events: &[Value]) -> String {
    let r: Vec<String> = events
        .iter()
        .filter_map(|v| v["rate"].as_f64())
        .map(|r| format!("{:.2}", r / 1e6))
        .collect();
    format!("[{}] MB/s", r.join(", "))
}

/// A `key=value` field of the worker's log line containing `message`.
fn log_field(log: &str, message: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A `key=number` field (integer or decimal) of the worker's log line containing `message`.
fn log_number(log: &str, message: &str, key: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

fn no_dead_letter(amqp: &Amqp) {
    if let Some(m) = amqp.get(DEAD_QUEUE) {
        panic!(
            "a dead letter: {:?} {}",
            m.message_id,
            m.header(HEADER_ERROR)
        );
    }
}

#[test]
fn a_laptop_with_three_lines_of_config_encodes_a_job_into_the_nas_library() {
    let mut nas = Nas::new("store-laptop");
    nas.start_store();
    let iso = nas.add_image("Laptop Disc.iso");
    // Nothing but the broker, the store's URL and the token file: the default scratch directory
    // (/var/lib/rafty/scratch, inside the host's namespace), the default preset and settings.
    let laptop = Laptop::new(&nas, "w-laptop", Some(("", "")));
    let config = std::fs::read_to_string(&laptop.config).unwrap();
    assert_eq!(
        config
            .lines()
            .filter(|l| l.contains(" = ") && !l.starts_with("host"))
            .count(),
        3,
        "{config}"
    );
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let worker = laptop.start(&nas);
    let hidden = PathBuf::from(format!("/proc/{}/root", worker.pid()))
        .join(iso.strip_prefix("/").expect("an absolute path"));
    assert!(
        !hidden.exists(),
        "the worker host must not see the NAS's image at {}",
        iso.display()
    );

    let id = nas.submit(&iso);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    assert_eq!(done["host"], "w-laptop", "{done}");
    let log = worker.log();
    assert!(
        log.contains("fetching the image from the store"),
        "the worker fetched the image: {log}"
    );
    let (video, sidecar) = nas.single_output(&id);
    assert_eq!(sidecar["host"], "w-laptop", "{sidecar}");
    assert_eq!(
        done["outputs"][0]["path"],
        nas.env.media_dir.join(&video).display().to_string(),
        "the done event names the file in the NAS's library: {done}"
    );
    for direction in ["download", "upload"] {
        let t = transfers(&amqp, &tap, &id, direction);
        let last = t
            .iter()
            .find(|v| v["complete"] == true)
            .unwrap_or_else(|| panic!("a complete {direction} event: {t:?}"));
        assert_eq!(last["bytes"], last["total"], "{last}");
        assert_eq!(last["percent"], 100.0, "{last}");
    }
    let download = transfers(&amqp, &tap, &id, "download");
    let rate = |message: &str| {
        let bytes = log_number(&log, message, "bytes")?;
        let secs = log_number(&log, message, "secs")?;
        Some(format!("{:.1} MB/s", bytes / secs / 1e6))
    };
    eprintln!(
        "unshaped link: download {:?} (image fetched and verified), upload {:?} (output uploaded, commit included)",
        rate("image fetched and verified"),
        rate("output uploaded and in place")
    );
    assert_eq!(
        download.last().unwrap()["total"],
        std::fs::metadata(&iso).unwrap().len(),
        "{download:?}"
    );
    // The default scratch directory is empty again (inside the host's namespace).
    let scratch = PathBuf::from(format!("/proc/{}/root/var/lib/rafty/scratch", worker.pid()));
    let left: Vec<_> = walk(&scratch);
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    no_dead_letter(&amqp);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn a_download_cut_mid_way_resumes_and_sends_little_again() {
    let mut nas = Nas::new("store-dcut");
    nas.start_store();
    let iso = nas.add_image("Cut Download.iso");
    let size = std::fs::metadata(&iso).unwrap().len();
    let laptop = Laptop::new(&nas, "w-dcut", None);
    // 4 Mbit/s: the 2.9 MB image takes about 6 s, so the cut lands inside it.
    laptop.shape(Some("4mbit"), None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    let before = amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "download" && v["bytes"].as_u64() > Some(0)
    });
    assert_eq!(before["complete"], false, "{before}");
    let net = net();
    net.link("w-dcut", false);
    // Longer than the stall timeout (2 s): the worker cuts the transfer and resumes it.
    std::thread::sleep(Duration::from_secs(4));
    net.link("w-dcut", true);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    laptop.shape(None, None);
    assert_eq!(done["attempt"], 0, "the same delivery finished: {done}");
    let download = transfers(&amqp, &tap, &id, "download");
    let resumed = download
        .iter()
        .filter_map(|v| v["resumed"].as_u64())
        .max()
        .unwrap_or_default();
    assert!(resumed >= 1, "the download was resumed: {download:?}");
    let log = worker.log();
    assert!(log.contains("resuming download"), "{log}");
    // Every response the store began is logged once it ends: the first, and one per resume.
    let responses = 1 + log.matches("resuming download").count();
    let store = nas.store();
    let served = wait_for(
        "the store to log every image response",
        Duration::from_secs(60),
        || {
            let s = store.served(&iso);
            (s.len() >= responses).then_some(s)
        },
    );
    assert!(
        served.iter().any(|s| s.3),
        "one response completed: {served:?}"
    );
    let sent: u64 = served.iter().map(|s| s.2).sum();
    let resent = sent.saturating_sub(size);
    eprintln!(
        "download cut for 4 s at {} of {size} bytes: responses (from, asked, sent, complete) {served:?}, \
         {sent} bytes sent, {resent} bytes sent again ({:.1} KiB; limit 1 MiB + one chunk); rates {}",
        before["bytes"],
        resent as f64 / 1024.0,
        rates(&download)
    );
    assert!(
        resent <= (1 << 20) + CHUNK,
        "{resent} bytes sent again after the cut: {served:?}"
    );
    let (_, sidecar) = nas.single_output(&id);
    assert_eq!(sidecar["source-sha256"], sha256_of(&iso), "{sidecar}");
    assert!(laptop.scratch_files(&worker).is_empty());
    no_dead_letter(&amqp);
}

#[test]
fn an_upload_cut_mid_way_resumes_and_leaves_one_output() {
    let mut nas = Nas::new("store-ucut");
    nas.start_store();
    let iso = nas.add_image("Cut Upload.iso");
    let laptop = Laptop::new(&nas, "w-ucut", None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "download" && v["complete"] == true
    });
    // While it encodes (about 2 s): 256 kbit/s out, so the ~330 KB output takes about 10 s.
    laptop.shape(None, Some("256kbit"));
    let before = amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "upload" && v["bytes"].as_u64() > Some(0)
    });
    assert_eq!(before["complete"], false, "{before}");
    let net = net();
    net.link("w-ucut", false);
    // The store's side of the cut: how much of the output it holds.
    let upload = nas
        .store()
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "upload started")
        .and_then(|v| v["fields"]["upload"].as_str().map(str::to_owned))
        .expect("the store logged the upload");
    let held = upload_offset(&nas, &upload);
    std::thread::sleep(Duration::from_secs(4));
    net.link("w-ucut", true);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    laptop.shape(None, None);
    assert_eq!(done["attempt"], 0, "{done}");
    let upload = transfers(&amqp, &tap, &id, "upload");
    let resumed = upload
        .iter()
        .filter_map(|v| v["resumed"].as_u64())
        .max()
        .unwrap_or_default();
    assert!(resumed >= 1, "the upload was resumed: {upload:?}");
    let (video, _) = nas.single_output(&id);
    let log = worker.log();
    let size = std::fs::metadata(nas.env.media_dir.join(&video))
        .unwrap()
        .len();
    assert!(
        held < size,
        "the cut came mid-upload: the store held {held} of {size} bytes"
    );
    let resent = log_field(&log, "output uploaded and in place", "resent")
        .expect("the worker logs the upload's figures");
    assert!(
        resent <= (1 << 20) + CHUNK,
        "{resent} bytes of the output sent again"
    );
    eprintln!(
        "upload cut for 4 s with {held} of {size} bytes at the store (the upload event before the cut said {}): \
         resumed {resumed}, the worker counts {resent} bytes sent again; rates {}",
        before["bytes"],
        rates(&upload)
    );
    assert!(
        nas.store().log().contains("output verified and in place"),
        "{}",
        nas.store().log()
    );
    assert!(laptop.scratch_files(&worker).is_empty());
    no_dead_letter(&amqp);
}

#[test]
fn an_image_changed_on_the_nas_after_queueing_is_dead_lettered_with_both_digests() {
    let mut nas = Nas::new("store-flip");
    nas.start_store();
    let iso = nas.add_image("Flipped.iso");
    let queued = sha256_of(&iso);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let id = nas.submit(&iso);
    // One byte flipped in place, after the job (and its digest) was queued.
    let mut bytes = std::fs::read(&iso).unwrap();
    bytes[1_000_000] ^= 0x40;
    std::fs::write(&iso, &bytes).unwrap();
    let now = sha256_of(&iso);
    assert_ne!(queued, now);

    let laptop = Laptop::new(&nas, "w-flip", None);
    let worker = laptop.start(&nas);
    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(60), |v| v["id"] == id);
    assert_eq!(failed["error-kind"], "source-corrupt", "{failed}");
    assert_eq!(failed["next"], "dead-letter", "{failed}");
    let dead = amqp.wait_get(DEAD_QUEUE, Duration::from_secs(10));
    assert_eq!(dead.message_id.as_deref(), Some(id.as_str()));
    let reason = dead.header(HEADER_ERROR);
    assert!(
        reason.contains(&queued) && reason.contains(&now),
        "the reason names the job's digest {queued} and the image's {now}: {reason}"
    );
    let log = worker.log();
    assert!(
        log.contains("fetching it again from zero"),
        "one fresh download before giving up: {log}"
    );
    assert!(
        nas.env.media_files().is_empty(),
        "{:?}",
        nas.env.media_files()
    );
    assert!(events_of(&amqp, &tap, "done", &id).is_empty());
    assert!(laptop.scratch_files(&worker).is_empty());
}

#[test]
fn a_store_that_is_down_sends_the_job_round_the_retry_ladder_until_it_is_up() {
    let mut nas = Nas::new("store-down");
    let iso = nas.add_image("Store Down.iso");
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let laptop = Laptop::new(&nas, "w-down", None);
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(60), |v| v["id"] == id);
    assert_eq!(failed["error-kind"], "store-unavailable", "{failed}");
    assert_eq!(failed["error-class"], "retryable", "{failed}");
    assert_eq!(
        failed["next"],
        format!("{RETRY_QUEUE_PREFIX}.2s"),
        "the first rung: {failed}"
    );
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&nas.url()),
        "the failure names the store: {failed}"
    );
    nas.start_store();
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(90), |v| v["id"] == id);
    assert!(
        done["attempt"].as_u64() >= Some(1),
        "a retry did it: {done}"
    );
    nas.single_output(&id);
    no_dead_letter(&amqp);
    assert!(laptop.scratch_files(&worker).is_empty());
}

#[test]
fn scratch_too_small_for_the_image_is_a_retryable_failure_that_leaves_nothing() {
    let mut nas = Nas::new("store-small");
    nas.start_store();
    let iso = nas.add_image("Too Big.iso");
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let mut laptop = Laptop::new(&nas, "w-small", None);
    // 1 MiB of scratch for a 2.9 MB image.
    laptop.small_scratch = Some("1m");
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(60), |v| v["id"] == id);
    assert_eq!(failed["error-kind"], "disk-full", "{failed}");
    assert_eq!(failed["error-class"], "retryable", "{failed}");
    assert_ne!(failed["next"], "dead-letter", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("scratch") && error.contains(&laptop.scratch.display().to_string()),
        "the failure names the scratch directory: {error}"
    );
    // The check came before the download: the store sent (next to) nothing.
    let sent: u64 = wait_for("the store's log line", Duration::from_secs(30), || {
        let s = nas.store().served(&iso);
        (!s.is_empty()).then_some(s)
    })
    .iter()
    .map(|s| s.2)
    .sum();
    eprintln!("scratch too small: the store sent {sent} bytes of the image");
    assert!(
        sent <= (1 << 20) + CHUNK,
        "{sent} bytes sent: the image was not downloaded"
    );
    let left = laptop.scratch_files(&worker);
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    no_dead_letter(&amqp);
    assert!(nas.env.media_files().is_empty());
}

#[test]
fn a_revoked_token_holds_the_worker_without_burning_the_job_until_the_store_accepts_it() {
    let mut nas = Nas::new("store-token");
    nas.start_store();
    let iso = nas.add_image("Token.iso");
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let laptop = Laptop::new(&nas, "w-token", None);
    let mut worker = laptop.start(&nas);
    assert!(worker.log().contains("the store accepts this worker"));
    // The NAS's owner deletes the laptop's line: refused from the next request on.
    std::fs::write(&nas.token_file, "another-machine-token-0123456789\n").unwrap();
    let id = nas.submit(&iso);
    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(60), |v| v["id"] == id);
    assert_eq!(failed["error-kind"], "store-unauthorized", "{failed}");
    assert_eq!(failed["next"], "requeued", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused this worker's token") && error.contains(&nas.url()),
        "the failure says the store refused the token: {error}"
    );
    worker.wait_log(
        "taking no jobs until it accepts it",
        Duration::from_secs(10),
    );
    // Held: the job waits in the queue, no consumer takes it.
    wait_for(
        "the job back in the queue with no consumer",
        Duration::from_secs(20),
        || (amqp.counts(WORK_QUEUE) == (1, 0)).then_some(()),
    );
    no_dead_letter(&amqp);
    // The owner puts the line back: the worker's next probe (every 10 s) lets it take jobs again.
    std::fs::write(
        &nas.token_file,
        format!("another-machine-token-0123456789\n{GOOD_TOKEN}\n"),
    )
    .unwrap();
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(60), |v| v["id"] == id);
    assert_eq!(done["attempt"], 0, "the refusals burnt no attempt: {done}");
    assert_eq!(
        events_of(&amqp, &tap, "failed", &id).len(),
        1,
        "one refusal, then held"
    );
    nas.single_output(&id);
    assert!(worker.log().contains("accepts this worker's token again"));
    no_dead_letter(&amqp);
}

/// The offset the store has for upload `id` (`HEAD /v1/uploads/ID`, from the root namespace).
fn upload_offset(nas: &Nas, id: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", "-I", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {GOOD_TOKEN}"))
        .arg(format!("{}/v1/uploads/{id}", nas.url()))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("upload-offset:")
                .map(|v| v.trim().parse().expect("digits"))
        })
        .unwrap_or_else(|| panic!("no upload-offset in {head:?}"))
}

/// `curl` from the root namespace: the HTTP status.
fn curl(url: &str, token: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "--path-as-is",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run curl (apt-get install curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_store_serves_only_images_under_its_roots_and_only_with_a_token() {
    let mut nas = Nas::new("store-paths");
    nas.start_store();
    let iso = nas.add_image("Real.iso");
    let link = nas.env.iso_dir.join("escape.iso");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let base = nas.url();
    let real = rafty_core::store::image_url(&base, &iso);
    let iso_dir = nas.env.iso_dir.display().to_string();
    let t = Some(GOOD_TOKEN);
    assert_eq!(curl(&real, t), "200", "the real image is served");
    let depth = "../".repeat(iso_dir.matches('/').count());
    let cases = [
        format!("{base}/v1/images{iso_dir}/{depth}etc/passwd"),
        format!("{base}/v1/images{iso_dir}/../Real.iso"),
        format!(
            "{base}/v1/images{iso_dir}/{}etc/passwd",
            "%2e%2e/".repeat(iso_dir.matches('/').count())
        ),
        format!(
            "{base}/v1/images{iso_dir}/{}etc/passwd",
            "%2E%2E/".repeat(iso_dir.matches('/').count())
        ),
        format!("{base}/v1/images{iso_dir}/.%2e/Real.iso"),
        format!("{base}/v1/images//etc/passwd"),
        format!("{base}/v1/images{iso_dir}//Real.iso"),
        format!("{base}/v1/images{iso_dir}%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/v1/images{iso_dir}/..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/v1/images{iso_dir}/..%5C..%5Cetc%5Cpasswd"),
        format!("{base}/v1/images{iso_dir}/Real.iso%00.txt"),
        format!("{base}/v1/images/etc/passwd"),
        format!("{base}/v1/images{iso_dir}/escape.iso"),
        format!("{base}/v1/images{iso_dir}/missing.iso"),
        format!("{base}/v1/outputs/../../etc/passwd"),
        format!("{base}/v1/outputs/..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/v1/outputs/%2e%2e/%2e%2e/etc/passwd"),
    ];
    let mut seen = Vec::new();
    for url in &cases {
        let status = curl(url, t);
        seen.push(format!("{status} {url}"));
        assert!(
            ["400", "403", "404"].contains(&status.as_str()),
            "{url} answered {status}: every traversal is refused with 400, 403 or 404"
        );
    }
    eprintln!("refused:\n  {}", seen.join("\n  "));
    assert!(
        curl(&format!("{base}/v1/images/etc/passwd"), t) == "403",
        "outside the roots: 403"
    );
    assert!(
        curl(&format!("{base}/v1/images{iso_dir}/missing.iso"), t) == "404",
        "missing: 404"
    );
    for url in [
        real.clone(),
        format!("{base}/v1/health"),
        format!("{base}/v1/images/etc/passwd"),
        format!("{base}/v1/outputs/Real.mkv"),
    ] {
        assert_eq!(curl(&url, None), "401", "no token: {url}");
        assert_eq!(
            curl(&url, Some("not-a-token-of-this-store-000")),
            "401",
            "a wrong token: {url}"
        );
    }
    let refusals = nas.store().log().matches("refused an image").count();
    assert!(refusals >= 10, "the store logs its refusals: {refusals}");
}

#[test]
fn two_workers_given_the_same_job_leave_one_output_and_one_sidecar() {
    let mut nas = Nas::new("store-twins");
    nas.start_store();
    let iso = nas.add_image("Twins.iso");
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let id = nas.submit(&iso);
    // The job, taken off the queue and published twice, as a redelivery after a lost ack would
    // hand it to a second worker while the first still has it.
    let job = amqp.wait_get(WORK_QUEUE, Duration::from_secs(10));
    assert_eq!(job.message_id.as_deref(), Some(id.as_str()));
    let laptops = [
        Laptop::new(&nas, "w-twin1", None),
        Laptop::new(&nas, "w-twin2", None),
    ];
    let workers: Vec<Worker> = laptops.iter().map(|l| l.start(&nas)).collect();
    for _ in 0..2 {
        amqp.publish("", WORK_QUEUE, &job.body, job_properties(&id, JOB_TYPE));
    }
    wait_for("two done events", Duration::from_secs(120), || {
        (events_of(&amqp, &tap, "done", &id).len() == 2).then_some(())
    });
    for w in &workers {
        assert!(
            w.log().contains("fetching the image from the store"),
            "each worker took a copy: {}",
            w.log()
        );
    }
    let (_, sidecar) = nas.single_output(&id);
    let done = events_of(&amqp, &tap, "done", &id);
    let paths: Vec<&Value> = done.iter().map(|d| &d["outputs"][0]["path"]).collect();
    assert_eq!(paths[0], paths[1], "both name the one output: {done:?}");
    assert!(
        ["w-twin1", "w-twin2"].contains(&sidecar["host"].as_str().unwrap_or_default()),
        "{sidecar}"
    );
    assert_eq!(amqp.counts(WORK_QUEUE).0, 0);
    no_dead_letter(&amqp);
    for (l, w) in laptops.iter().zip(&workers) {
        assert!(l.scratch_files(w).is_empty());
    }
}

#[test]
fn a_worker_killed_mid_download_has_its_scratch_swept_by_the_next() {
    let mut nas = Nas::new("store-kill");
    nas.start_store();
    let iso = nas.add_image("Killed.iso");
    let laptop = Laptop::new(&nas, "w-kill", None);
    // 2 Mbit/s: the download takes about 12 s.
    laptop.shape(Some("2mbit"), None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let mut worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "download" && v["bytes"].as_u64() > Some(0)
    });
    let dirs = laptop.remote_dirs(&worker);
    let pid = worker.pid();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(
        dirs[0].starts_with(&format!("{pid}-")),
        "the job's directory is named by the worker's pid: {dirs:?}"
    );
    let partial = laptop
        .scratch
        .join("remote")
        .join(&dirs[0])
        .join("source.iso");
    worker.signal(Signal::SIGKILL);
    worker.wait(Duration::from_secs(10));
    // The scratch directory is on this machine's file system: what the killed worker left is there.
    assert!(partial.exists(), "{} left by the kill", partial.display());
    laptop.shape(None, None);

    let next = laptop.start(&nas);
    assert!(
        next.log()
            .contains("removed fetched images left by stopped workers"),
        "{}",
        next.log()
    );
    assert!(!partial.exists(), "{} swept", partial.display());
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    assert_eq!(done["host"], "w-kill");
    nas.single_output(&id);
    assert!(laptop.scratch_files(&next).is_empty());
    no_dead_letter(&amqp);
}

#[test]
fn a_worker_stopped_mid_download_removes_its_scratch_and_hands_the_job_back() {
    let mut nas = Nas::new("store-term");
    nas.start_store();
    let iso = nas.add_image("Stopped.iso");
    let laptop = Laptop::new(&nas, "w-term", None);
    laptop.shape(Some("2mbit"), None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let mut worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "download" && v["bytes"].as_u64() > Some(0)
    });
    assert_eq!(laptop.remote_dirs(&worker).len(), 1);
    let scratch = laptop.scratch.join("remote");
    // The first signal lets the job finish; the second stops it now.
    worker.signal(Signal::SIGTERM);
    worker.wait_log("finishing the current job", Duration::from_secs(10));
    worker.signal(Signal::SIGTERM);
    let status = worker.wait(Duration::from_secs(20));
    laptop.shape(None, None);
    let left = walk(&scratch);
    assert!(
        left.is_empty(),
        "the stopped worker removed its fetched image: {left:?} ({status})"
    );
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0,
        "no job directory left"
    );
    // Handed back, not failed: the job waits for the next worker with its attempts untouched.
    wait_for("the job back in the queue", Duration::from_secs(20), || {
        (amqp.counts(WORK_QUEUE) == (1, 0)).then_some(())
    });
    no_dead_letter(&amqp);
    let next = laptop.start(&nas);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    assert_eq!(done["attempt"], 0, "{done}");
    nas.single_output(&id);
    assert!(laptop.scratch_files(&next).is_empty());
}

/// An HTTP proxy in front of the store that ends the first image response after half its declared
/// length and closes the connection (a short body); everything else passes through untouched.
const SHORT_BODY_PROXY: &str = r#"
import http.client, http.server, socket, sys, threading
host, port, up_host, up_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
state = {"cut": False}
lock = threading.Lock()

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        up = http.client.HTTPConnection(up_host, up_port, timeout=30)
        up.request(self.command, self.path, body=body, headers=headers)
        r = up.getresponse()
        short = False
        if self.command == "GET" and self.path.startswith("/v1/images/") and r.status == 200:
            with lock:
                short = not state["cut"]
                state["cut"] = True
        self.send_response_only(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                self.send_header(k, v)
        self.end_headers()
        limit = int(r.getheader("Content-Length") or 0) // 2 if short else None
        sent = 0
        while True:
            chunk = r.read(65536)
            if not chunk:
                break
            if limit is not None and sent + len(chunk) >= limit:
                self.wfile.write(chunk[: limit - sent])
                self.wfile.flush()
                print("cut", limit, flush=True)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                up.close()
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        self.wfile.flush()
        up.close()

    do_GET = do_POST = do_PATCH = do_HEAD = forward

server = http.server.ThreadingHTTPServer((host, port), Proxy)
print("listening", flush=True)
server.serve_forever()
"#;

#[test]
fn a_short_body_is_resumed_from_where_it_stopped() {
    let mut nas = Nas::new("store-short");
    nas.start_store();
    let iso = nas.add_image("Short Body.iso");
    let size = std::fs::metadata(&iso).unwrap().len();
    let net = net();
    let addr = net.address("nas");
    let proxy_port = nas.port + 1000;
    let proxy_log = nas.env.path().join("proxy.log");
    let proxy = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns("nas"),
            "python3",
            "-c",
            SHORT_BODY_PROXY,
        ])
        .arg(&addr)
        .arg(proxy_port.to_string())
        .arg(&addr)
        .arg(nas.port.to_string())
        .stdout(std::fs::File::create(&proxy_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the proxy (python3)");
    let proxy = StoreProc {
        child: proxy,
        log: proxy_log,
    };
    wait_for("the proxy to listen", Duration::from_secs(20), || {
        proxy.log().contains("listening").then_some(())
    });
    // The worker knows the store by the proxy's address; the job by the store's own.
    let laptop = Laptop::new(&nas, "w-short", None);
    let text = std::fs::read_to_string(&laptop.config).unwrap();
    std::fs::write(
        &laptop.config,
        text.replace(&nas.url(), &format!("http://{addr}:{proxy_port}")),
    )
    .unwrap();
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    assert_eq!(done["attempt"], 0, "{done}");
    assert!(
        proxy.log().contains(&format!("cut {}", size / 2)),
        "the proxy cut the body: {}",
        proxy.log()
    );
    let log = worker.log();
    assert!(
        log.contains(&format!("from={}", size / 2)),
        "the download resumed from where the body stopped: {log}"
    );
    let download = transfers(&amqp, &tap, &id, "download");
    assert!(
        download.iter().any(|v| v["resumed"].as_u64() >= Some(1)),
        "{download:?}"
    );
    let served = nas.store().served(&iso);
    assert!(
        served.iter().any(|s| s.0 == size / 2 && s.3),
        "the store served the rest from the cut on: {served:?}"
    );
    eprintln!(
        "short body at {} of {size} bytes: store responses {served:?}",
        size / 2
    );
    let (_, sidecar) = nas.single_output(&id);
    assert_eq!(sidecar["source-sha256"], sha256_of(&iso));
    assert!(laptop.scratch_files(&worker).is_empty());
}

#[test]
fn a_store_restarted_mid_upload_gets_the_output_offered_again_and_lands_it_once() {
    let mut nas = Nas::new("store-restart");
    nas.start_store();
    let iso = nas.add_image("Restarted.iso");
    let laptop = Laptop::new(&nas, "w-restart", None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let worker = laptop.start(&nas);
    let id = nas.submit(&iso);
    amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "download" && v["complete"] == true
    });
    laptop.shape(None, Some("256kbit"));
    amqp.wait_event(&tap, "transfer", Duration::from_secs(60), |v| {
        v["id"] == id && v["direction"] == "upload" && v["bytes"].as_u64() > Some(0)
    });
    // The NAS's store dies mid-upload (its temporary file stays) and comes back on the same port.
    let mut old = nas.store.take().expect("the store runs");
    old.child.kill().expect("SIGKILL the store");
    old.child.wait().expect("reap the store");
    let temps: Vec<String> = nas
        .env
        .media_files()
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect();
    assert_eq!(temps.len(), 1, "the killed store's upload: {temps:?}");
    std::thread::sleep(Duration::from_secs(1));
    nas.start_store();
    assert!(
        nas.store()
            .log()
            .contains("removed uploads left by a stopped store"),
        "{}",
        nas.store().log()
    );
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    laptop.shape(None, None);
    assert_eq!(done["attempt"], 0, "the same delivery finished: {done}");
    assert!(
        nas.store().log().contains("upload started"),
        "the output was offered again to the new store: {}",
        nas.store().log()
    );
    nas.single_output(&id);
    assert!(laptop.scratch_files(&worker).is_empty());
    no_dead_letter(&amqp);
    drop(old);
}

/// What a split title's run through the fleet showed: the join's done event, the hosts that made
/// steps, the pieces' frames, and how many steps each host made.
struct SplitRun {
    join: Value,
    hosts: Vec<String>,
    frames: u64,
    steps: usize,
}

/// Submit `iso` split by chapters on the NAS and follow it to its join, asserting every check passed
/// and the library's video has every piece's frames.
fn split_run(nas: &Nas, amqp: &Amqp, tap: &EventTap, iso: &Path) -> SplitRun {
    let id = nas.submit_with(
        iso,
        &["--split", "chapters", "--preset", "Very Fast 480p30"],
    );
    let split = amqp.wait_event(tap, "split", Duration::from_secs(90), |v| v["id"] == id);
    let chapters = split["chapters"].as_array().expect("chapters").clone();
    assert_eq!(chapters.len(), 2, "two pieces for two workers: {split}");
    let join = amqp.wait_event(tap, "done", Duration::from_secs(300), |v| {
        v["split"]["whole"] == id && v["split"]["step"] == "join"
    });
    assert!(join["split"]["fallback"].is_null(), "{join}");
    let checks = join["split"]["checks"].as_array().expect("checks");
    assert!(checks.len() >= 5, "{join}");
    for c in checks {
        assert_eq!(c["passed"], true, "join check {c}");
    }
    let mut hosts = Vec::new();
    let mut frames = 0;
    let steps = split["jobs"].as_array().expect("jobs");
    for step in steps {
        let done = amqp.wait_event(tap, "done", Duration::from_secs(10), |v| v["id"] == *step);
        assert_eq!(done["skipped"], false, "{done}");
        if done["split"]["step"] != "tracks" {
            frames += done["split"]["frames"].as_u64().expect("frames");
        }
        hosts.push(done["host"].as_str().unwrap().to_owned());
    }
    assert_eq!(join["split"]["frames"], frames, "{join}");
    let (video, sidecar) = nas.single_output(&id);
    assert_eq!(sidecar["host"], join["host"], "{sidecar}");
    assert_eq!(
        join["outputs"][0]["path"],
        nas.env.media_dir.join(&video).display().to_string(),
        "{join}"
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
        .arg(nas.env.media_dir.join(&video))
        .output()
        .expect("run ffprobe");
    let joined: u64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        joined, frames,
        "the library's video has every piece's frames"
    );
    eprintln!(
        "split {id}: steps by {hosts:?}, joined by {}, {frames} frames, {} checks passed",
        join["host"],
        checks.len()
    );
    SplitRun {
        steps: steps.len(),
        join,
        hosts,
        frames,
    }
}

/// The test image of the split tests: one 60 s title of four 15 s chapters.
fn chaptered_iso(nas: &Nas) -> PathBuf {
    nas.env.add_iso(
        &fixture_iso_chapters("SPLITSTORE", &["60@0,15,30,45"]),
        "Split Disc.iso",
    )
}

#[test]
fn a_title_split_by_chapters_travels_through_the_store_between_two_laptops() {
    let mut nas = Nas::new("store-split");
    nas.start_store();
    // Neither laptop sees the NAS's image, its library or the other laptop.
    let iso = chaptered_iso(&nas);
    let (one, two) = (
        Laptop::new(&nas, "w-split1", None),
        Laptop::new(&nas, "w-split2", None),
    );
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    let workers = [one.start(&nas), two.start(&nas)];

    let run = split_run(&nas, &amqp, &tap, &iso);
    let mut hosts = run.hosts.clone();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts, ["w-split1", "w-split2"], "both laptops took steps");
    assert!(run.frames > 0);
    let log = nas.store().log();
    let stored = log.matches("step file verified and in place").count();
    assert_eq!(
        stored, run.steps,
        "every piece and the tracks pass reached the store: {log}"
    );
    assert!(
        log.matches("step file served").count() >= run.steps,
        "the join fetched the steps from the store: {log}"
    );
    assert!(log.contains("split steps removed"), "{log}");
    for (laptop, worker) in [(&one, &workers[0]), (&two, &workers[1])] {
        let left = laptop.scratch_files(worker);
        assert!(left.is_empty(), "{} left scratch: {left:?}", laptop.host);
    }
    no_dead_letter(&amqp);
}

#[test]
fn a_worker_with_the_storage_and_a_laptop_without_share_one_split_title() {
    let mut nas = Nas::new("store-mixed");
    nas.start_store();
    let iso = chaptered_iso(&nas);
    let laptop = Laptop::new(&nas, "w-mixed", None);
    let amqp = nas.env.amqp();
    let tap = amqp.tap();
    // A worker on the NAS itself: it reads the image and writes the library directly.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", net().ns("nas")])
        .arg(bin("transcoded"));
    let mut local = nas.env.worker_with(cmd, &nas.config, &[]);
    local.wait_log("connected; waiting for jobs", Duration::from_secs(30));
    let remote = laptop.start(&nas);

    let run = split_run(&nas, &amqp, &tap, &iso);
    let mut hosts = run.hosts.clone();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts, ["nas", "w-mixed"], "both workers took steps");
    // The laptop's steps went through the store; the NAS worker's were written in place, and the
    // join (on either) found them all.
    let by_laptop = run.hosts.iter().filter(|h| *h == "w-mixed").count();
    let log = nas.store().log();
    assert_eq!(
        log.matches("step file verified and in place").count(),
        by_laptop,
        "{log}"
    );
    if run.join["host"] == "w-mixed" {
        assert!(
            log.matches("step file served").count() >= run.steps,
            "{log}"
        );
    }
    assert!(laptop.scratch_files(&remote).is_empty());
    no_dead_letter(&amqp);
}
