//! The parts of Rafty every program shares: the job message (v1) and every other message on the wire
//! ([`wire`]: events, worker status, control), the configuration file, the failure classes that
//! decide between retry and dead letter, the names of the broker topology, the exit statuses
//! ([`exit`]), and the volume label reader for disc images.
//!
//! Nothing here talks to the network or spawns a process; everything is a plain value or a pure function,
//! so the rules that the rest of the system relies on can be tested without a broker.

pub mod config;
pub mod exit;
pub mod failure;
pub mod job;
pub mod label;
pub mod logging;
pub mod names;
pub mod output;
pub mod paths;
pub mod split;
pub mod store;
pub mod wire;

pub use config::{Config, ConfigError};
pub use failure::{Class, Failure, classify};
pub use job::{Job, JobError, Media, TitleSelection};
