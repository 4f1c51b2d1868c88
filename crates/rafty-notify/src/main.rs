//! `rafty-notify`: Rafty's notifier. See the library for what it does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rafty_core::logging::{self, LogFormat};
use rafty_core::names::ENV_CONFIG;
use rafty_notify::{config, run, signals};

/// Exit status for an unusable configuration (EX_CONFIG): systemd's RestartPreventExitStatus=78.
const EXIT_CONFIG: u8 = 78;

/// Rafty's notifier: sends done and failed events to webhooks, ntfy topics and commands.
///
/// Events wait in its own durable queue while it is stopped. The first SIGTERM lets the notification
/// in hand finish; a second stops at once (the event stays queued).
///
/// Exit status: 0 stopped cleanly, 1 failed, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file, with a [notify] section [default: /etc/rafty/rafty.toml]
    #[arg(long, short, env = ENV_CONFIG, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: human or json
    #[arg(long, default_value = "human", value_name = "FORMAT")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One thread is plenty: HTTP requests run on the blocking pool, commands in their own processes.
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
    runtime.block_on(async move {
        let shutdown = match signals::shutdown_on_signals() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        run(settings, shutdown).await;
        ExitCode::SUCCESS
    })
}
