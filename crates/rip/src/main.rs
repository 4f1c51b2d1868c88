//! `rip`: copy one disc to an image and publish its job. See the library for the steps.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use rafty_core::exit;
use rafty_program::{CommonArgs, Intent, Kind, Program, Threads};
use rip::{Ripped, report_error, rip_disc, watch};

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
    #[command(flatten)]
    common: CommonArgs,
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

/// Two threads: the copy runs on one while progress is announced on the other.
const PROGRAM: Program = Program {
    name: "rip",
    kind: Kind::Daemon,
    threads: Threads::Workers(1),
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (loaded, runtime) = match PROGRAM.start(&cli.common) {
        Ok((loaded, runtime)) => (Arc::new(loaded), runtime),
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let shutdown = match PROGRAM.signals(Intent {
            drain: "stop requested: saving the map; run rip again to resume",
            abort: "second stop request: still saving the map",
            drain_timeout: None,
        }) {
            Ok(s) => s,
            Err(code) => return code,
        };
        // The copy checks a flag between reads (it runs on a blocking thread).
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let drain = shutdown.drain.clone();
        tokio::spawn(async move {
            drain.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        match cli.command {
            Some(Command::Watch { drives }) => {
                match watch::watch(loaded, drives, stop, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => PROGRAM.fail(
                        exit::UNAVAILABLE,
                        format!("cannot watch udev: {e} (is systemd-udevd running?)"),
                    ),
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
