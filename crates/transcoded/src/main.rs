//! `transcoded`: the Rafty transcode worker. See the library for what it does.

use std::process::ExitCode;

use clap::Parser;
use rafty_core::exit;
use rafty_program::{CommonArgs, Intent, Kind, Program, Threads};
use transcoded::{RunOptions, StartError, run};

/// Rafty's transcode worker: takes jobs from RabbitMQ and runs HandBrakeCLI on them.
///
/// Start one on every machine with spare CPU; they share the queue. The first SIGTERM lets the
/// current encode finish (within [transcode] drain-timeout), a second stops it and hands the job back.
///
/// Exit status: 0 stopped cleanly, 1 failed, 69 HandBrakeCLI missing, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Exit 0 after this many deliveries are settled (done, retried, dead-lettered or handed back)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_jobs: Option<u64>,
}

/// One thread is plenty: HandBrake does the work in its own process, and it keeps idle memory low.
const PROGRAM: Program = Program {
    name: "transcoded",
    kind: Kind::Daemon,
    threads: Threads::One,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (loaded, runtime) = match PROGRAM.start(&cli.common) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let drain_timeout = loaded.config.transcode.drain_timeout;
    runtime.block_on(async move {
        let shutdown = match PROGRAM.signals(Intent {
            drain: "stop requested: finishing the current job (signal again to stop now)",
            abort: "second stop request: stopping the current job now",
            drain_timeout: Some(drain_timeout),
        }) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let options = RunOptions {
            max_jobs: cli.max_jobs,
        };
        match run(loaded, options, shutdown).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                let code = match e.downcast_ref::<StartError>() {
                    Some(StartError::Config(_)) => exit::CONFIG,
                    Some(StartError::Unavailable(_)) => exit::UNAVAILABLE,
                    None => exit::FAILURE,
                };
                PROGRAM.fail(code, format!("{e:#}"))
            }
        }
    })
}
