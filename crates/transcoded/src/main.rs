//! `transcoded`: the Rafty transcode worker. See the library for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rafty_core::Config;
use rafty_core::logging::{self, LogFormat};
use rafty_core::names::ENV_CONFIG;
use transcoded::{RunOptions, StartError, run, signals};

/// Rafty's transcode worker: takes jobs from RabbitMQ and runs HandBrakeCLI on them.
///
/// Start one on every machine with spare CPU; they share the queue. The first SIGTERM lets the
/// current encode finish (within [transcode] drain-timeout), a second stops it and hands the job back.
///
/// Exit status: 0 stopped cleanly, 1 failed, 69 HandBrakeCLI missing, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file [default: /etc/rafty/rafty.toml if present, else built-in defaults]
    #[arg(long, short, env = ENV_CONFIG, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Exit 0 after this many deliveries are settled (done, retried, dead-lettered or handed back)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_jobs: Option<u64>,
    /// Log format on stderr: human or json
    #[arg(long, default_value = "human", value_name = "FORMAT")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    let loaded = match Config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(78);
        }
    };
    // One thread is plenty: HandBrake does the work in its own process, and it keeps idle memory low.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let drain_timeout = loaded.config.transcode.drain_timeout;
    runtime.block_on(async move {
        let shutdown = match signals::shutdown_on_signals(drain_timeout) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let options = RunOptions {
            max_jobs: cli.max_jobs,
        };
        match run(loaded, options, shutdown).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                let code = match e.downcast_ref::<StartError>() {
                    Some(StartError::Config(_)) => 78,
                    Some(StartError::Unavailable(_)) => 69,
                    None => 1,
                };
                tracing::error!("{e:#}");
                ExitCode::from(code)
            }
        }
    })
}
