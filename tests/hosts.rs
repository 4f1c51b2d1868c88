//! Several hosts on one machine: a broker host, two worker hosts and a rip host, each in its own
//! network namespace, joined by veth pairs on a bridge in the root namespace (where the test itself
//! watches). The shared storage is one real directory that every host sees at a path of its own
//! (bind mounts in each host's mount namespace), so the workers find the rip host's ISO only through
//! `path-map`; they reach the broker by its address, with 2 s AMQP heartbeats.
//!
//! ```text
//!   root namespace: bridge 10.A.B.1 ── test process (events, queue counts, media directory)
//!      ├── veth ── broker    10.A.B.2   private RabbitMQ node
//!      ├── veth ── worker-a  10.A.B.3   transcoded; storage at /srv/a/iso, /srv/a/media
//!      ├── veth ── worker-b  10.A.B.4   transcoded; storage at /srv/b/nas/iso, /srv/b/nas/media
//!      └── veth ── rip       10.A.B.5   raftyctl submit; storage at /srv/rip-host/iso
//! ```
//!
//! Each test builds its own network and broker; [`Net`] removes the namespaces, the links and every
//! process left in them when it is dropped (a panic included), and a reaper does it when the test
//! binary dies without unwinding.

#[path = "support/net.rs"]
mod net;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rafty_core::names::WORK_QUEUE;
use rafty_testkit::{Amqp, Env, EventTap, Worker, bin, fixture_iso, wait_for};
use serde_json::Value;

use net::Net;

/// The hosts of a test network, in address order (.2, .3, …).
const HOSTS: [&str; 4] = ["broker", "worker-a", "worker-b", "rip"];

/// Where each host sees the shared storage.
const RIP_ISO: &str = "/srv/rip-host/iso";
struct WorkerHost {
    name: &'static str,
    iso: &'static str,
    media: &'static str,
}
const WORKER_A: WorkerHost = WorkerHost {
    name: "worker-a",
    iso: "/srv/a/iso",
    media: "/srv/a/media",
};
const WORKER_B: WorkerHost = WorkerHost {
    name: "worker-b",
    iso: "/srv/b/nas/iso",
    media: "/srv/b/nas/media",
};

/// One test's network, broker, storage and configs.
struct Cluster {
    env: Env,
    net: Net,
}

impl Cluster {
    fn new(test: &str) -> Cluster {
        let net = Net::new(&HOSTS);
        let env = Env::new(net.broker(), test);
        std::fs::create_dir_all(&env.media_dir).unwrap();
        Cluster { env, net }
    }

    /// A worker's config: its own paths, a path-map from the rip host's, 2 s heartbeats.
    fn worker_config(&self, w: &WorkerHost) -> PathBuf {
        let path = self.env.write_config(
            &format!("{}.toml", w.name),
            Some(w.name),
            &[
                ("output-dir", &format!("\"{}\"", w.media)),
                ("source-roots", &format!("[\"{}\"]", w.iso)),
                ("path-map", &format!("{{ \"{RIP_ISO}\" = \"{}\" }}", w.iso)),
            ],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("?heartbeat=5"), "{text}");
        std::fs::write(&path, text.replace("?heartbeat=5", "?heartbeat=2")).unwrap();
        path
    }

    /// Start `transcoded` on its host and wait until it consumes.
    fn start_worker(&self, w: &WorkerHost) -> Worker {
        let config = self.worker_config(w);
        let cmd = self.net.command(
            w.name,
            &[(&self.env.iso_dir, w.iso), (&self.env.media_dir, w.media)],
            &bin("transcoded"),
        );
        let mut worker = self.env.worker_with(cmd, &config, &[]);
        worker.wait_log("connected; waiting for jobs", Duration::from_secs(30));
        assert!(
            worker
                .log()
                .contains(&format!("{}:", self.net.address("broker"))),
            "{} reaches the broker by its address: {}",
            w.name,
            worker.log()
        );
        worker
    }

    /// `raftyctl submit` on the rip host, of an ISO it sees under its own path; returns the job id.
    fn submit_on_rip_host(&self, iso_name: &str) -> String {
        let config = self.env.write_config(
            "rip-host.toml",
            Some("rip-host"),
            &[("rip.iso-dir", &format!("\"{RIP_ISO}\""))],
        );
        let out: Output = self
            .net
            .command("rip", &[(&self.env.iso_dir, RIP_ISO)], &bin("raftyctl"))
            .arg("submit")
            .arg(format!("{RIP_ISO}/{iso_name}"))
            .env("RAFTY_CONFIG", &config)
            .env_remove("RAFTY_AMQP_URL")
            .output()
            .expect("run raftyctl on the rip host");
        assert!(
            out.status.success(),
            "submit on the rip host failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let (id, path) = stdout.trim().split_once('\t').expect("JOB-ID<TAB>PATH");
        assert_eq!(
            path,
            format!("{RIP_ISO}/{iso_name}"),
            "the job carries the rip host's path"
        );
        id.to_owned()
    }

    /// The job's final output as the sidecar describes it, after checking the media directory holds
    /// exactly one video and its sidecar and nothing else (no temporary encode).
    fn single_output(&self, id: &str) -> (String, Value) {
        let files = self.env.media_files();
        let sidecars: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(".rafty.json"))
            .collect();
        assert_eq!(
            sidecars.len(),
            1,
            "one sidecar in the media directory: {files:?}"
        );
        let video = sidecars[0].trim_end_matches(".rafty.json").to_owned();
        assert_eq!(
            files,
            vec![video.clone(), sidecars[0].clone()],
            "exactly one video and its sidecar, no temporary file"
        );
        let sidecar: Value =
            serde_json::from_slice(&std::fs::read(self.env.media_dir.join(sidecars[0])).unwrap())
                .unwrap();
        assert_eq!(sidecar["job-id"], id, "{sidecar}");
        assert_eq!(
            sidecar["source-path"],
            format!("{RIP_ISO}/{}", iso_name_of(&sidecar)),
            "{sidecar}"
        );
        (video, sidecar)
    }
}

fn iso_name_of(sidecar: &Value) -> String {
    Path::new(sidecar["source-path"].as_str().unwrap_or_default())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every `done` event for `id` seen so far.
fn done_events(amqp: &Amqp, tap: &EventTap, id: &str) -> Vec<Value> {
    amqp.drain_events(tap)
        .into_iter()
        .filter(|(k, v)| k.ends_with(".done") && v["id"] == id)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_job_submitted_on_the_rip_host_is_encoded_on_a_worker_host_through_path_map() {
    let cluster = Cluster::new("hosts-map");
    let env = &cluster.env;
    env.add_iso(&fixture_iso("SMALL", &[12]), "Small Disc.iso");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let workers = [
        (cluster.start_worker(&WORKER_A), &WORKER_A),
        (cluster.start_worker(&WORKER_B), &WORKER_B),
    ];

    let id = cluster.submit_on_rip_host("Small Disc.iso");
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    let host = done["host"].as_str().unwrap_or_default().to_owned();
    let (worker, w) = workers
        .iter()
        .find(|(_, w)| w.name == host)
        .unwrap_or_else(|| panic!("done by a worker host, not {host:?}: {done}"));
    let log = worker.log();
    assert!(
        log.contains(&format!("source={}/Small Disc.iso", w.iso)),
        "{host} read the image at its own path: {log}"
    );
    let output = done["outputs"][0]["path"].as_str().unwrap_or_default();
    assert!(
        output.starts_with(&format!("{}/", w.media)),
        "{host} wrote into its own view of the media directory: {done}"
    );

    let (video, sidecar) = cluster.single_output(&id);
    assert_eq!(sidecar["host"], host, "{sidecar}");
    assert_eq!(Path::new(output).file_name().unwrap(), video.as_str());
    assert!(std::fs::metadata(env.media_dir.join(&video)).unwrap().len() > 0);
    assert_eq!(done_events(&amqp, &tap, &id).len(), 1, "one done event");
    let other = workers.iter().find(|(_, w)| w.name != host).unwrap();
    assert!(
        !other.0.log().contains("job received"),
        "the other worker never took it: {}",
        other.0.log()
    );
}

#[test]
fn a_worker_cut_off_mid_encode_loses_the_job_to_the_other_host_and_leaves_no_second_output() {
    let cluster = Cluster::new("hosts-cut");
    let env = &cluster.env;
    let net = &cluster.net;
    // 120 s of video: about 14 s of encoding here, so the cut lands well inside it.
    env.add_iso(&fixture_iso("LONG", &[120]), "Long Feature.iso");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let mut worker_a = cluster.start_worker(&WORKER_A);

    let id = cluster.submit_on_rip_host("Long Feature.iso");
    amqp.wait_event(&tap, "started", Duration::from_secs(60), |v| {
        v["id"] == id && v["host"] == "worker-a"
    });
    amqp.wait_event(&tap, "progress", Duration::from_secs(30), |v| {
        v["id"] == id && v["host"] == "worker-a"
    });
    assert!(
        net.handbrake_running("worker-a"),
        "worker-a is encoding: {}",
        worker_a.log()
    );
    // worker-b idles beside it: with prefetch 1 the job is worker-a's until the broker takes it back.
    let mut worker_b = cluster.start_worker(&WORKER_B);
    assert_eq!(
        amqp.counts(WORK_QUEUE),
        (0, 2),
        "one job in hand, two consumers"
    );

    let cut = Instant::now();
    net.link("worker-a", false);
    let requeued = wait_for(
        "the broker to drop worker-a (missed heartbeats)",
        Duration::from_secs(30),
        || (amqp.counts(WORK_QUEUE).1 == 1).then(Instant::now),
    );
    amqp.wait_event(&tap, "started", Duration::from_secs(30), |v| {
        v["id"] == id && v["host"] == "worker-b"
    });
    let b_started = Instant::now();
    // worker-a notices the lost connection itself and stops HandBrake.
    let a_stopped = wait_for(
        "worker-a to stop its HandBrakeCLI",
        Duration::from_secs(60),
        || (!net.handbrake_running("worker-a")).then(Instant::now),
    );
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(120), |v| v["id"] == id);
    let done_at = Instant::now();
    assert_eq!(done["host"], "worker-b", "{done}");

    let restored = Instant::now();
    net.link("worker-a", true);
    let reconnected = wait_for("worker-a to reconnect", Duration::from_secs(60), || {
        (worker_a
            .log()
            .matches("connected; waiting for jobs")
            .count()
            >= 2
            && amqp.counts(WORK_QUEUE).1 == 2)
            .then(Instant::now)
    });
    assert!(worker_a.running(), "worker-a is alive: {}", worker_a.log());
    assert!(worker_b.running(), "worker-b is alive: {}", worker_b.log());

    let log_a = worker_a.log();
    assert!(
        !log_a.contains("output verified and in place")
            && !log_a.contains("the same work finished elsewhere first"),
        "worker-a gave up its copy instead of finishing it: {log_a}"
    );
    // No temporary encode left by either worker (worker-a deletes its own when it stops).
    wait_for(
        "no temporary encode in the media directory",
        Duration::from_secs(30),
        || (!env.media_files().iter().any(|f| f.ends_with(".part"))).then_some(()),
    );
    let (video, sidecar) = cluster.single_output(&id);
    assert_eq!(sidecar["host"], "worker-b", "{sidecar}");
    assert!(std::fs::metadata(env.media_dir.join(&video)).unwrap().len() > 0);
    // Once back, worker-a announces nothing more for this job: one done event, by worker-b.
    let dones = done_events(&amqp, &tap, &id);
    assert_eq!(dones.len(), 1, "one done event: {dones:?}");
    assert_eq!(amqp.counts(WORK_QUEUE), (0, 2), "nothing left to do");

    eprintln!("timings from the cut of worker-a's link (worker heartbeat 2 s):");
    for (what, t) in [
        ("the broker dropped worker-a", requeued),
        ("worker-b started the job", b_started),
        ("worker-a's HandBrakeCLI gone", a_stopped),
        ("done by worker-b", done_at),
        ("link restored", restored),
        ("worker-a reconnected", reconnected),
    ] {
        eprintln!("  {what:<30} {:5.1} s", t.duration_since(cut).as_secs_f64());
    }
}
