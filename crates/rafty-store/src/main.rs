//! `rafty-store`: serves disc images to workers without shared storage and takes their verified
//! outputs into the media library. See the library for what it does.

use std::process::ExitCode;

use clap::Parser;
use rafty_core::exit;
use rafty_program::{CommonArgs, Intent, Kind, Program, Threads};
use rafty_store::{ServerError, StoreSettings, run};

/// Rafty's store: disc images out to workers that share no file system with this machine, verified
/// videos back into its media library, over HTTP(S) with bearer tokens.
///
/// It serves only images under [rip] iso-dir and [transcode] source-roots, and puts outputs in
/// [transcode] output-dir under the same rules as a local worker. It listens on [store] listen and
/// accepts the tokens in [store] token-file (one per line; a deleted line is refused from the next
/// request on); with [store] tls-cert and tls-key it serves HTTPS.
///
/// Exit status: 0 stopped cleanly, 1 failed, 69 cannot listen, 78 configuration error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Two threads: one can hash an upload while the other serves an image.
const PROGRAM: Program = Program {
    name: "rafty-store",
    kind: Kind::Daemon,
    threads: Threads::Workers(2),
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (loaded, runtime) = match PROGRAM.start(&cli.common) {
        Ok(started) => started,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let settings = match StoreSettings::from_config(&loaded) {
            Ok(s) => s,
            Err(e) => return PROGRAM.fail(exit::CONFIG, &e),
        };
        let listen = loaded.config.store.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                return PROGRAM.fail(
                    exit::UNAVAILABLE,
                    format!(
                        "cannot listen on {listen} ([store] listen in {}): {e}",
                        loaded.source_name()
                    ),
                );
            }
        };
        let shutdown = match PROGRAM.signals(Intent {
            drain: "stop requested: no new connections, finishing requests in flight",
            abort: "second stop request: stopping now",
            drain_timeout: None,
        }) {
            Ok(s) => s,
            Err(code) => return code,
        };
        match run(settings, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ (ServerError::Config(_) | ServerError::Tokens(_) | ServerError::Tls(_))) => {
                PROGRAM.fail(exit::CONFIG, &e)
            }
        }
    })
}
