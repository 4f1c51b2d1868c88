//! `rafty-store`: disc images out to workers and verified videos back, over HTTP(S), for workers
//! that share no file system with the machine holding the images and the media library.
//!
//! The server serves an image only by its place under the store's source roots (`[rip] iso-dir`
//! and `[transcode] source-roots`), with byte ranges so a cut download resumes; it takes an output
//! only after the worker declared its size and SHA-256, checks both, fsyncs it and links it into the
//! media library with its sidecar under the same rules as a local worker
//! ([`rafty_core::output::commit`]: never over another job's file). Every request carries a bearer
//! token from `[store] token-file`. The client is what a worker uses: resumed, verified transfers
//! that fetch only from the store in the worker's own config.
//!
//! Layout: [`server`] is the whole server (`run(config, listener, shutdown)`, so tests start the
//! real server in-process); [`client`] the worker's side; [`api`] the messages both exchange;
//! [`tokens`] the token file; [`tls`] the rustls set-up both share (the same CA conventions as
//! `amqps`). `main.rs` is the program prelude's glue. The HTTP protocol is in docs/store.md.

pub mod api;
pub mod client;
pub mod server;
pub mod tls;
pub mod tokens;

pub use client::{StoreClient, StoreError};
pub use server::{ServerError, StoreSettings, run};

/// Free bytes for an unprivileged writer in the file system that holds `dir` (or its nearest
/// existing ancestor, for a directory not made yet).
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut probe = dir;
    loop {
        if let Ok(s) = nix::sys::statvfs::statvfs(probe) {
            return Some(s.blocks_available() * s.fragment_size());
        }
        probe = probe.parent()?;
    }
}
