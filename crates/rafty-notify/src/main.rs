//! `rafty-notify`: Rafty's notifier. See the library for what it does.

use std::process::ExitCode;

use clap::Parser;
use rafty_notify::{config, run};
use rafty_program::{CommonArgs, Intent, Kind, Program, Threads};

/// Rafty's notifier: sends done and failed events to webhooks, ntfy topics and commands.
///
/// Events wait in its own durable queue while it is stopped. The first SIGTERM lets the notification
/// in hand finish; a second stops at once (the event stays queued). Its configuration file needs a
/// [notify] section.
///
/// Exit status: 0 stopped cleanly, 1 failed, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// One thread is plenty: HTTP requests run on the blocking pool, commands in their own processes.
const PROGRAM: Program = Program {
    name: "rafty-notify",
    kind: Kind::Daemon,
    threads: Threads::One,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (settings, runtime) = match PROGRAM.start_with(&cli.common, config::load) {
        Ok(started) => started,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let shutdown = match PROGRAM.signals(Intent {
            drain: "stop requested: finishing the notification in hand (signal again to stop now)",
            abort: "second stop request: stopping now",
            drain_timeout: None,
        }) {
            Ok(s) => s,
            Err(code) => return code,
        };
        run(settings, shutdown).await;
        ExitCode::SUCCESS
    })
}
