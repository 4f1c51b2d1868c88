//! `transcoded`, Rafty's transcode worker.
//!
//! It consumes `rafty.transcode` as one of any number of competing consumers (prefetch 1), runs
//! HandBrakeCLI on each job's disc image, verifies the result, puts it in place with a sidecar manifest,
//! announces `rafty.transcode.done`, and only then acks. Failures go to the retry ladder or the
//! dead-letter queue as [`rafty_core::classify`] decides (see `rafty_queue::settle`).
//!
//! [`run`] is the whole worker; `main.rs` only parses flags, sets up logging and maps signals
//! ([`signals::shutdown_on_signals`]) so tests can run the same worker in-process.

pub mod inhibit;
pub mod metrics;
pub mod naming;
pub mod output;
pub mod signals;
pub mod transcoder;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rafty_core::config::Loaded;
use rafty_handbrake::HandBrake;
use rafty_queue::{Shutdown, Stats, Topology, WorkerOptions, mask_url, run_worker};
use tracing::{info, warn};

pub use transcoder::Transcoder;

/// How this worker answers control requests: `status` (what it is doing), `drain` and `resume` (stop
/// taking jobs after the current one, and start again) when addressed by its host name or `*`.
fn control_fn(
    host: &str,
    handbrake: &str,
    activity: transcoder::Activity,
    shutdown: Shutdown,
    pause: Arc<tokio::sync::watch::Sender<bool>>,
) -> rafty_queue::control::ControlFn {
    let (host, handbrake) = (host.to_owned(), handbrake.to_owned());
    let started = std::time::Instant::now();
    Arc::new(move |request: &serde_json::Value| {
        let for_me = || matches!(request["host"].as_str(), Some(h) if h == host || h == "*");
        match request["request"].as_str() {
            Some("status") => {}
            Some("drain") if for_me() => {
                pause.send_replace(true);
            }
            Some("resume") if for_me() => {
                pause.send_replace(false);
            }
            _ => return None,
        }
        let job = activity.lock().ok().and_then(|a| a.clone());
        let state = match (&job, shutdown.drain.is_cancelled(), *pause.borrow()) {
            (_, true, _) => "stopping",
            (Some(_), false, true) => "draining",
            (None, false, true) => "drained",
            (Some(_), false, false) => "working",
            (None, false, false) => "idle",
        };
        Some(serde_json::json!({
            "host": host,
            "app": "transcoded",
            "version": env!("CARGO_PKG_VERSION"),
            "handbrake": handbrake,
            "pid": std::process::id(),
            "uptime-secs": started.elapsed().as_secs(),
            "state": state,
            "job": job,
        }))
    })
}

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
    let url = loaded
        .amqp_url()
        .map_err(|e| StartError::Config(e.to_string()))?;
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
    naming::Naming::new(&t.movie_name, &t.title_name, t.container)
        .map_err(|e| StartError::Config(format!("{e} (in {})", loaded.source_name())))?;
    // Encodes left by a killed worker: one of this host's, or one nothing has written for twice the
    // stall limit.
    let swept = output::sweep_stale_temps(&t.output_dir, t.stall_timeout * 2, &loaded.host());
    if swept > 0 {
        info!(swept, "removed temporary encodes left by stopped workers");
    }
    for dir in [&t.scratch_dir, &t.output_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create directory; jobs will be retried until it can be written");
        }
    }
    let host = loaded.host();
    info!(
        config = %loaded.source_name(),
        broker = %mask_url(&url),
        handbrake = %version,
        host = %host,
        output_dir = %t.output_dir.display(),
        "transcoded starting"
    );
    let activity = transcoder::Activity::default();
    let pause = Arc::new(tokio::sync::watch::channel(false).0);
    let control = control_fn(
        &host,
        &version,
        activity.clone(),
        shutdown.clone(),
        pause.clone(),
    );
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
    let transcoder =
        Transcoder::new(&loaded, handbrake, version, activity, metrics).with_presets(presets);
    let options = WorkerOptions {
        url,
        app_id: "transcoded".to_owned(),
        host,
        topology: Topology::from_config(t),
        confirm_timeout: config.broker.confirm_timeout,
        max_jobs: options.max_jobs,
        reconnect_max: Duration::from_secs(30),
        control: Some(control),
        heartbeat: t.heartbeat_interval,
        pause,
    };
    let stats = run_worker(&options, &transcoder, &shutdown)
        .await
        .context("the worker loop failed")?;
    info!(?stats, "transcoded stopped");
    Ok(stats)
}
