//! `raftyctl`: Rafty's control tool. See the library for the commands.

use std::process::ExitCode;

use clap::Parser;
use rafty_core::Config;
use rafty_core::logging;
use raftyctl::{Cli, EXIT_CONFIG, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "warn");
    let loaded = match Config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("raftyctl: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftyctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftyctl: {e}");
            ExitCode::from(e.code)
        }
    }
}
