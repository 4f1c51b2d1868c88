//! `rip`: copy one disc to an image and publish its job. See the library for the steps.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use rafty_core::Config;
use rafty_core::logging::{self, LogFormat};
use rafty_core::names::ENV_CONFIG;
use rip::{Ripped, report_error, rip_disc, watch};
use tokio::signal::unix::{SignalKind, signal};

/// Rafty's ripper: copies a disc to an ISO (ddrescue-grade, resumable), ejects it, publishes a job.
///
/// Run by the udev rule through rip@srN.service, once per disc; `rip watch` does the same for hosts
/// without systemd. SIGTERM stops the copy with its map saved: run rip again to resume.
///
/// Exit status: 0 image done and job published (or kept in the outbox, or the disc was copied
/// before); 65 unsupported disc (audio CD); 66 no disc; 73 not enough space; 74 unreadable sectors
/// left (partial image and map kept); 75 another rip holds the drive, or stopped early; 78 bad config.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Drive (or image file) to copy [default: [rip] device, /dev/sr0]
    #[arg(long, short, value_name = "DEVICE")]
    device: Option<PathBuf>,
    /// Configuration file [default: /etc/rafty/rafty.toml if present, else built-in defaults]
    #[arg(long, short, global = true, env = ENV_CONFIG, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: human or json
    #[arg(long, global = true, default_value = "human", value_name = "FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch udev and rip every disc inserted into an optical drive, until SIGTERM.
    Watch {
        /// Kernel name prefix of the drives to watch
        #[arg(long, default_value = "sr")]
        drives: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    let loaded = match Config::load(cli.config.as_deref()) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(78);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::warn!("stop requested: saving the map; run rip again to resume");
            flag.store(true, Ordering::SeqCst);
            let _ = stopped_tx.send(true);
        });
        match cli.command {
            Some(Command::Watch { drives }) => {
                match watch::watch(loaded, drives, stop, stopped_rx).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("cannot watch udev: {e} (is systemd-udevd running?)");
                        ExitCode::from(69)
                    }
                }
            }
            None => {
                let device = cli
                    .device
                    .unwrap_or_else(|| loaded.config.rip.device.clone());
                match rip_disc(&loaded, &device, stop).await {
                    Ok(Ripped::Published { image, job }) => {
                        println!("{job}\t{}", image.display());
                        ExitCode::SUCCESS
                    }
                    Ok(Ripped::Outboxed { image, file }) => {
                        println!("outbox\t{}\t{}", file.display(), image.display());
                        ExitCode::SUCCESS
                    }
                    Ok(Ripped::AlreadyCopied(image)) => {
                        println!("already-copied\t{}", image.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        report_error(&e);
                        ExitCode::from(e.exit_code())
                    }
                }
            }
        }
    })
}
