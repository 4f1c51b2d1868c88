//! A directory per test, its config, and the Rafty programs run against it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Amqp, Broker, Cluster, bin};

/// One test's world: a vhost, an ISO directory, a media directory, a config file.
pub struct Env {
    dir: tempfile::TempDir,
    /// The vhost's AMQP URL (on a cluster: the first node's, for the test's own clients).
    pub url: String,
    /// On a cluster, every node's URL: the config then says `[broker] urls = [...]`.
    pub urls: Vec<String>,
    /// `[rip] iso-dir` (the source root).
    pub iso_dir: PathBuf,
    /// `[transcode] output-dir`.
    pub media_dir: PathBuf,
}

impl Env {
    /// A new world on `broker`, named after the test.
    pub fn new(broker: &Broker, test: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rafty-{test}-"))
            .tempdir()
            .expect("temp dir");
        let iso_dir = dir.path().join("iso");
        let media_dir = dir.path().join("media");
        std::fs::create_dir_all(&iso_dir).unwrap();
        let env = Env {
            url: broker.vhost(test),
            urls: Vec::new(),
            iso_dir,
            media_dir,
            dir,
        };
        env.write_config("rafty.toml", None, &[]);
        env
    }

    /// A new world on a vhost of `cluster` (named after the test), whose config lists every node
    /// (`[broker] urls`), each URL with a heartbeat of `heartbeat` seconds.
    pub fn on_cluster(cluster: &Cluster, test: &str, heartbeat: u32) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rafty-{test}-"))
            .tempdir()
            .expect("temp dir");
        let iso_dir = dir.path().join("iso");
        let media_dir = dir.path().join("media");
        std::fs::create_dir_all(&iso_dir).unwrap();
        let vhost = cluster.vhost(test);
        let env = Env {
            url: cluster.url(0, &vhost, heartbeat),
            urls: cluster.urls(&vhost, heartbeat),
            iso_dir,
            media_dir,
            dir,
        };
        env.write_config("rafty.toml", None, &[]);
        env
    }

    /// The test's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The default config file (`rafty.toml`).
    pub fn config(&self) -> PathBuf {
        self.path().join("rafty.toml")
    }

    /// Write a config file: short retry rungs, a fast preset, the spool and ISO directories in the
    /// test's directory, no eject, and `overrides` for `[transcode]` keys, or `[rip]` keys when
    /// prefixed with `rip.` (values in TOML syntax).
    pub fn write_config(
        &self,
        name: &str,
        host: Option<&str>,
        overrides: &[(&str, &str)],
    ) -> PathBuf {
        let mut r: BTreeMap<&str, String> = BTreeMap::new();
        r.insert("iso-dir", toml_str(&self.iso_dir));
        r.insert("spool-dir", toml_str(&self.path().join("spool")));
        r.insert("eject", "\"never\"".into());
        r.insert("progress-interval", "\"1s\"".into());
        r.insert("broker-timeout", "\"5s\"".into());
        let mut t: BTreeMap<&str, String> = BTreeMap::new();
        t.insert("output-dir", toml_str(&self.media_dir));
        t.insert("scratch-dir", toml_str(&self.path().join("scratch")));
        t.insert("preset", "\"Very Fast 480p30\"".into());
        t.insert("retry-delays", "[\"1s\", \"2s\"]".into());
        t.insert("stall-timeout", "\"60s\"".into());
        t.insert("drain-timeout", "\"60s\"".into());
        for (k, v) in overrides {
            match k.strip_prefix("rip.") {
                Some(k) => r.insert(k, (*v).to_owned()),
                None => t.insert(k, (*v).to_owned()),
            };
        }
        let mut text = String::new();
        if let Some(h) = host {
            text.push_str(&format!("host = \"{h}\"\n"));
        }
        if self.urls.is_empty() {
            text.push_str(&format!("[broker]\nurl = \"{}\"\n", self.url));
        } else {
            let urls: Vec<String> = self.urls.iter().map(|u| format!("\"{u}\"")).collect();
            text.push_str(&format!("[broker]\nurls = [{}]\n", urls.join(", ")));
        }
        for (section, keys) in [("rip", r), ("transcode", t)] {
            text.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Run `rip` with `config` and extra arguments.
    pub fn rip(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(bin("rip"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RAFTY_AMQP_URL")
            .env_remove("RAFTY_CONFIG")
            .env("NO_COLOR", "1")
            .output()
            .expect("run rip")
    }

    /// Put a fixture into the ISO directory under `name`.
    pub fn add_iso(&self, fixture: &Path, name: &str) -> PathBuf {
        let dest = self.iso_dir.join(name);
        std::fs::copy(fixture, &dest).expect("copy fixture");
        dest
    }

    /// Run `raftyctl` with the default config.
    pub fn raftyctl(&self, args: &[&str]) -> Output {
        self.raftyctl_with(&self.config(), args)
    }

    /// Run `raftyctl` with `config`.
    pub fn raftyctl_with(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(bin("raftyctl"))
            .args(args)
            .env("RAFTY_CONFIG", config)
            .env_remove("RAFTY_AMQP_URL")
            .output()
            .expect("run raftyctl")
    }

    /// `raftyctl submit ISO`; returns the job id it prints.
    pub fn submit(&self, iso: &Path, extra: &[&str]) -> String {
        let mut args = vec!["submit", iso.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let out = self.raftyctl(&args);
        assert!(
            out.status.success(),
            "submit {} failed: {}",
            iso.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.split('\t').next().unwrap().trim().to_owned()
    }

    /// Start `transcoded` with `config` and extra arguments; its log goes to a file in the test dir.
    pub fn worker(&self, config: &Path, args: &[&str]) -> Worker {
        self.worker_with(Command::new(bin("transcoded")), config, args)
    }

    /// Start `transcoded` through a wrapper command (e.g. `unshare`), which must exec it with the
    /// arguments appended.
    pub fn worker_with(&self, mut cmd: Command, config: &Path, args: &[&str]) -> Worker {
        let n = std::fs::read_dir(self.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = self.path().join(format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RAFTY_AMQP_URL")
            .env_remove("RAFTY_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start transcoded");
        Worker { child, log }
    }

    /// A client on the test's vhost.
    pub fn amqp(&self) -> Amqp {
        Amqp::connect(&self.url)
    }

    /// Every file name in the media directory, hidden ones included, sorted.
    pub fn media_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.media_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn toml_str(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// A running `transcoded`; killed when dropped.
pub struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal the worker");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Wait for it to exit; panics with its log after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "transcoded did not exit within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until its log contains `text`.
    pub fn wait_log(&mut self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert!(
                self.running(),
                "transcoded exited before logging {text:?}; its log:\n{}",
                self.log()
            );
            assert!(
                start.elapsed() < timeout,
                "transcoded did not log {text:?} within {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
