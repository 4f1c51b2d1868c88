//! HandBrakeCLI as a child process.
//!
//! - [`HandBrake::scan`] runs `--scan --json` and parses the title set out of HandBrake's mixed stdout.
//! - [`HandBrake::encode`] runs one encode with an argv (never a shell), parses the `\r`-separated
//!   progress lines, drains stderr concurrently (its tail becomes the error message), stops HandBrake
//!   when progress stalls or when the caller cancels, and reports how it ended.
//! - [`parse_progress`], [`parse_scan`] and [`complaint`] are pure, so the formats are tested without
//!   HandBrake.
//!
//! HandBrake is started in its own process group (a Ctrl-C in the worker's terminal is the worker's to
//! handle) and with a parent-death signal, so it never outlives a worker that is killed.

mod parse;
mod process;

pub use parse::{Progress, Scan, Title, complaint, parse_preset_list, parse_progress, parse_scan};
pub use process::{EncodeRequest, Error, HandBrake, Tracks};
