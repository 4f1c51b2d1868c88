//! The program prelude: what every Rafty binary does before its own work, declared once.
//!
//! - [`CommonArgs`]: the flags every program takes (`--config`, `--log-format`), flattened into each
//!   binary's clap parser.
//! - [`Program::start`]: logging, the configuration (an unusable one exits
//!   [`exit::CONFIG`](rafty_core::exit::CONFIG), 78, which the units name in
//!   `RestartPreventExitStatus`), and the async runtime.
//! - [`shutdown_on_signals`]: SIGTERM and SIGINT mapped to intent in one place, the same
//!   [`Shutdown`] shape for every daemon: the first signal drains, a second one (or the drain
//!   timeout) aborts.
//!
//! A `main.rs` is then glue: parse, start, run the library's `run`, map its error to an exit code.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rafty_core::config::Loaded;
use rafty_core::logging::{self, LogFormat};
use rafty_core::names::ENV_CONFIG;
use rafty_core::{Config, exit};
pub use rafty_queue::Shutdown;
use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

/// The flags every Rafty program takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file [default: /etc/rafty/rafty.toml]
    #[arg(long, short, global = true, env = ENV_CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr: human or json
    #[arg(long, global = true, default_value = "human", value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// How a program talks to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A daemon or a unit's oneshot: logs at `info`, errors go to the log (the journal).
    Daemon,
    /// A command-line tool whose data is on stdout: logs at `warn`, errors are one `name: …` line.
    Tool,
}

/// The async runtime a program needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread: the work happens in child processes or the blocking pool (low idle memory).
    One,
    /// A runtime with this many worker threads (rip copies on one while it announces on another).
    Workers(usize),
}

/// One Rafty program.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Its name, in error lines.
    pub name: &'static str,
    /// Daemon or tool.
    pub kind: Kind,
    /// Its runtime.
    pub threads: Threads,
}

impl Program {
    /// Set up logging, load the configuration and build the runtime; on failure the exit code to
    /// return (78 for the configuration, 1 otherwise), the reason already reported.
    pub fn start(
        &self,
        common: &CommonArgs,
    ) -> Result<(Loaded, tokio::runtime::Runtime), ExitCode> {
        self.start_with(common, Config::load)
    }

    /// [`Program::start`] with a loader of its own (a program that reads more than [`Config`]).
    pub fn start_with<T, E: Display>(
        &self,
        common: &CommonArgs,
        load: impl FnOnce(Option<&Path>) -> Result<T, E>,
    ) -> Result<(T, tokio::runtime::Runtime), ExitCode> {
        logging::init(
            common.log_format,
            match self.kind {
                Kind::Daemon => "info",
                Kind::Tool => "warn",
            },
        );
        let loaded = load(common.config.as_deref()).map_err(|e| self.fail(exit::CONFIG, e))?;
        let mut builder = match self.threads {
            Threads::One => tokio::runtime::Builder::new_current_thread(),
            Threads::Workers(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        let runtime = builder.enable_all().build().map_err(|e| {
            self.fail(
                exit::FAILURE,
                format_args!("cannot start the async runtime: {e}"),
            )
        })?;
        Ok((loaded, runtime))
    }

    /// [`shutdown_on_signals`], reporting a failure to install the handlers as this program does.
    pub fn signals(&self, intent: Intent) -> Result<Shutdown, ExitCode> {
        shutdown_on_signals(intent).map_err(|e| {
            self.fail(
                exit::FAILURE,
                format_args!("cannot install signal handlers: {e}"),
            )
        })
    }

    /// Report `error` the way this kind of program does, and return `code` as the exit status.
    pub fn fail(&self, code: u8, error: impl Display) -> ExitCode {
        match self.kind {
            Kind::Daemon => tracing::error!("{error}"),
            Kind::Tool => eprintln!("{}: {error}", self.name),
        }
        ExitCode::from(code)
    }
}

/// What the signals mean to one program, in its own words.
#[derive(Debug, Clone)]
pub struct Intent {
    /// Logged at the first SIGTERM or SIGINT, which drains.
    pub drain: &'static str,
    /// Logged at the second, which aborts.
    pub abort: &'static str,
    /// Abort by itself this long after the drain began (a worker's `drain-timeout`).
    pub drain_timeout: Option<Duration>,
}

/// Install the SIGTERM and SIGINT handlers (inside the runtime) and return the shutdown they drive:
/// the first signal cancels `drain`, a second one, or `drain_timeout` after the first, cancels
/// `abort`.
pub fn shutdown_on_signals(intent: Intent) -> std::io::Result<Shutdown> {
    let shutdown = Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        warn!("{}", intent.drain);
        s.drain.cancel();
        let timeout = async {
            match intent.drain_timeout {
                Some(t) => {
                    tokio::time::sleep(t).await;
                    warn!(
                        drain_timeout_secs = t.as_secs(),
                        "drain timeout reached: stopping now"
                    );
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => warn!("{}", intent.abort),
            _ = int.recv() => warn!("{}", intent.abort),
            _ = timeout => {}
        }
        s.abort.cancel();
    });
    Ok(shutdown)
}
