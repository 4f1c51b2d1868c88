//! Rafty's test kit: real parts, started for real.
//!
//! - [`Broker`]: a private RabbitMQ node per test binary (its own ports, directories and Erlang
//!   cookie, `consumer_timeout` raised), stopped by a reaper when the test binary exits; each test gets
//!   its own vhost ([`Broker::vhost`]) so tests share the node without seeing each other's queues.
//! - [`Cluster`]: a three-node (or any size) RabbitMQ cluster on this machine, whose nodes a test
//!   kills, restarts, freezes and thaws.
//! - [`fixture_iso`]: real DVD-Video ISOs built with ffmpeg + dvdauthor + genisoimage, cached.
//! - [`Env`]: a directory per test with an ISO directory, a media directory and a config file, and
//!   helpers to run `raftyctl` and `transcoded` against it.
//! - [`Amqp`]: a small synchronous AMQP client to look inside queues and to publish what a
//!   third-party client would.
//!
//! A missing tool is a test failure with the install command, never a skip.

mod amqp;
mod broker;
mod chaos;
mod cluster;
mod dbus;
mod env;
mod faulty;
pub use faulty::FaultyDisc;
mod fixtures;
mod loopdev;
pub mod s3;

pub use amqp::{Amqp, EventTap, Message, job_properties};
pub use broker::{Broker, BrokerBuilder, shared_broker};
pub use chaos::{Rng, durable_event_queue, processes_with, spawn_rip};
pub use cluster::Cluster;
pub use dbus::PrivateBus;
pub use env::{Env, Worker};
pub use fixtures::{fixture_iso, fixture_iso_chapters, garbage_iso};
pub use loopdev::LoopDevice;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .expect("crates/rafty-testkit sits two levels below the root")
        .to_path_buf()
}

/// A script from `scripts/`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

/// Path of a workspace binary (`transcoded`, `raftyctl`), built by `cargo test --workspace` or
/// `cargo build`; panics with the command to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // A test runs from target/<profile>/deps/, a tool such as rafty-bench from target/<profile>/.
    let here = exe.parent().expect("a directory");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (the test script does)",
        path.display()
    );
    path
}

/// Poll `check` every 100 ms until it returns `Some`, or panic naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Check that the external tools the tests need are installed; panic with the install command if not.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing tools {missing:?}: run `sudo .ci/install-deps` (apt-get install rabbitmq-server handbrake-cli ffmpeg dvdauthor genisoimage)"
    );
}
