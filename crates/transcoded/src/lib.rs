//! `transcoded`, Rafty's transcode worker.
//!
//! It consumes `rafty.transcode` as one of any number of competing consumers (prefetch 1), runs
//! HandBrakeCLI on each job's disc image, verifies the result, puts it in place with a sidecar manifest,
//! announces `rafty.transcode.done`, and only then acks. Failures go to the retry ladder or the
//! dead-letter queue as [`rafty_queue::verdict`] decides.
//!
//! Layout: [`run`] is the whole worker (checks, then the shared consumer loop, `rafty_queue::run`);
//! [`worker`] is what only a worker adds to that loop (control, heartbeat, metrics by settlement);
//! [`transcoder`] does one job; [`output`] puts outputs in place; [`naming`] renders their names;
//! [`remote`] is what a job whose image comes from `rafty-store` adds (scratch, transfer events, the
//! token gate); [`split`] is a title split by chapters across workers (the plan, the join and its
//! checks; the steps themselves are `transcoder::steps`); [`metrics`] serves Prometheus; [`inhibit`] holds off sleep during a job. `main.rs` is the program
//! prelude's glue, so tests can run the same worker in-process.

pub mod inhibit;
pub mod metrics;
pub mod naming;
pub use rafty_core::output;
pub mod remote;
pub mod split;
pub mod transcoder;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rafty_core::config::Loaded;
use rafty_core::names::WORK_QUEUE;
use rafty_handbrake::HandBrake;
use rafty_queue::{Broker, ConsumerOptions, Shutdown, Stats, Topology};
use tracing::{info, warn};

pub use transcoder::Transcoder;

/// Options given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit after this many deliveries are settled.
    pub max_jobs: Option<u64>,
}

/// Errors that mean the worker cannot run at all, with the exit code systemd should see.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable (exit 78, EX_CONFIG: systemd should not restart in a loop).
    #[error("{0}")]
    Config(String),
    /// A required program is missing (exit 69, EX_UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
}

/// Run the worker until `shutdown` drains it or `--max-jobs` is reached.
pub async fn run(loaded: Loaded, options: RunOptions, shutdown: Shutdown) -> anyhow::Result<Stats> {
    let config = &loaded.config;
    let broker = loaded
        .amqp_urls()
        .map_err(|e| StartError::Config(e.to_string()))
        .and_then(|urls| Broker::new(urls).map_err(|e| StartError::Config(e.to_string())))?;
    let t = &config.transcode;
    let handbrake = HandBrake::new(
        t.handbrake.clone(),
        t.preset_files.clone(),
        Some(t.scratch_dir.clone()),
        t.min_title_secs,
    );
    let version = handbrake
        .version()
        .await
        .map_err(|e| StartError::Unavailable(e.to_string()))?;
    let presets = handbrake.presets().await.map_err(|e| {
        StartError::Config(format!(
            "HandBrakeCLI cannot list its presets (check [transcode] preset-files in {}): {e}",
            loaded.source_name()
        ))
    })?;
    for (key, preset) in [
        ("preset", Some(&t.preset)),
        ("preset-dvd", t.preset_dvd.as_ref()),
        ("preset-bluray", t.preset_bluray.as_ref()),
    ] {
        if let Some(preset) = preset
            && !presets.is_empty()
            && !presets.contains(preset)
        {
            return Err(StartError::Config(format!(
                "[transcode] {key} = {preset:?} in {} is not a preset of this HandBrakeCLI; it has: {}",
                loaded.source_name(),
                presets.join(", ")
            ))
            .into());
        }
    }
    for (tool, package) in [
        ("mkvmerge", "mkvtoolnix"),
        ("ffprobe", "ffmpeg"),
        ("ffmpeg", "ffmpeg"),
    ] {
        let found = std::process::Command::new(tool)
            .arg(if tool == "mkvmerge" {
                "--version"
            } else {
                "-version"
            })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            warn!(
                tool,
                package,
                "not found: this worker fails the steps of split titles (docs/split.md) until {package} is installed; other jobs are not affected"
            );
        }
    }
    naming::Naming::new(&t.movie_name, &t.title_name, t.container)
        .map_err(|e| StartError::Config(format!("{e} (in {})", loaded.source_name())))?;
    // Encodes left by a killed worker: one of this host's, or one nothing has written for twice the
    // stall limit.
    let swept = output::sweep_stale_temps(&t.output_dir, t.stall_timeout * 2, &loaded.host());
    if swept > 0 {
        info!(swept, "removed temporary encodes left by stopped workers");
    }
    let store = rafty_store::StoreClient::from_config(&loaded)
        .map_err(|e| StartError::Config(format!("{e} (in {})", loaded.source_name())))?;
    let swept = remote::sweep_scratch(&t.scratch_dir);
    if swept > 0 {
        info!(swept, "removed fetched images left by stopped workers");
    }
    for dir in [&t.scratch_dir, &t.output_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create directory; jobs will be retried until it can be written");
        }
    }
    let host = loaded.host();
    info!(
        config = %loaded.source_name(),
        broker = %broker.shown(),
        handbrake = %version,
        host = %host,
        output_dir = %t.output_dir.display(),
        "transcoded starting"
    );
    let activity = transcoder::Activity::default();
    let hold = Arc::new(tokio::sync::watch::channel(false).0);
    let status = worker::StatusSource {
        host: host.clone(),
        handbrake: version.clone(),
        activity: activity.clone(),
        shutdown: shutdown.clone(),
        hold: hold.clone(),
        started: std::time::Instant::now(),
    };
    let metrics = metrics::Metrics::new();
    if let Some(addr) = t.metrics_address {
        let bound = metrics::serve(addr, metrics.clone()).await.map_err(|e| {
            StartError::Config(format!(
                "cannot serve metrics on {addr} ([transcode] metrics-address in {}): {e}",
                loaded.source_name()
            ))
        })?;
        info!(url = %format!("http://{bound}/metrics"), "serving Prometheus metrics");
    }
    let mut transcoder =
        Transcoder::new(&loaded, handbrake, version, activity, metrics).with_presets(presets);
    if let Some(store) = store {
        let gate = Arc::new(remote::StoreGate::new(store.clone(), hold.clone()));
        match store.health().await {
            Ok(h) => {
                info!(store = %store.base(), store_host = %h.host, "the store accepts this worker")
            }
            Err(e @ rafty_store::StoreError::Unauthorized { .. }) => gate.refused(&e.to_string()),
            Err(e) => {
                warn!(error = %e, "the store is not reachable now; jobs it serves will be retried")
            }
        }
        transcoder = transcoder.with_store(store, gate);
    }
    let topology = Topology::from_config(t);
    let worker = worker::Worker::new(
        transcoder,
        status,
        t.heartbeat_interval,
        topology.clone(),
        config.broker.confirm_timeout,
    );
    let options = ConsumerOptions {
        broker,
        app_id: "transcoded".to_owned(),
        host,
        queue: WORK_QUEUE.to_owned(),
        noun: "job",
        topology,
        confirm_timeout: config.broker.confirm_timeout,
        max_deliveries: options.max_jobs,
        reconnect_max: Duration::from_secs(30),
        hold,
    };
    let stats = rafty_queue::run(&options, &worker, &shutdown)
        .await
        .context("the worker loop failed")?;
    info!(?stats, "transcoded stopped");
    Ok(stats)
}
