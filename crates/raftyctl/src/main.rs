//! `raftyctl`: Rafty's control tool. See the library for the commands.

use std::process::ExitCode;

use clap::Parser;
use rafty_program::{Kind, Program, Threads};
use raftyctl::{Cli, run};

const PROGRAM: Program = Program {
    name: "raftyctl",
    kind: Kind::Tool,
    threads: Threads::One,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (loaded, runtime) = match PROGRAM.start(&cli.common) {
        Ok(started) => started,
        Err(code) => return code,
    };
    match runtime.block_on(run(cli, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => PROGRAM.fail(e.code, &e.message),
    }
}
