//! `rafty-replicate`: Rafty's replicator. See the library for what it does.

use std::process::ExitCode;

use clap::Parser;
use rafty_program::{CommonArgs, Intent, Kind, Program, Threads};

/// Rafty's replicator: copies every disc image and video to each destination in
/// [replicate] destinations, verified by SHA-256, and keeps the ledger `raftyctl audit` checks.
///
/// Each destination's backlog waits in its own durable queue (rafty.replicate.NAME) while the
/// replicator is stopped or the destination is away. The first SIGTERM lets the copies in hand
/// finish; a second stops at once (they stay queued).
///
/// Exit status: 0 stopped cleanly, 1 failed, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

const PROGRAM: Program = Program {
    name: "rafty-replicate",
    kind: Kind::Daemon,
    threads: Threads::One,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (loaded, runtime) = match PROGRAM.start(&cli.common) {
        Ok(started) => started,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let shutdown = match PROGRAM.signals(Intent {
            drain: "stop requested: finishing the copies in hand (signal again to stop now)",
            abort: "second stop request: stopping now",
            drain_timeout: None,
        }) {
            Ok(s) => s,
            Err(code) => return code,
        };
        match rafty_replicate::run(loaded, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            // Every reason it cannot start is in the configuration.
            Err(e) => PROGRAM.fail(rafty_core::exit::CONFIG, e),
        }
    })
}
