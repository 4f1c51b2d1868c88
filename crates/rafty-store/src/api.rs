//! What the store and its workers send each other besides the bytes (docs/store.md).

use rafty_core::output::Sidecar;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A worker's offer of a finished output (`POST /v1/outputs`): what it is, before any byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutputOffer {
    /// The job that made it.
    pub job: Uuid,
    /// Its path relative to the media library, `/`-separated (the naming template's result).
    pub output: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The sidecar to put beside it.
    pub sidecar: Sidecar,
}

/// The store's answer to an offer, or to a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum OutputState {
    /// Send the bytes to `/v1/uploads/<upload>` from `offset`.
    Upload {
        /// The upload's id.
        upload: Uuid,
        /// Bytes the store already has.
        offset: u64,
    },
    /// The verified output is in the library now, made from this upload.
    Committed {
        /// Where it is, on the store's machine.
        path: std::path::PathBuf,
        /// Its sidecar as written.
        sidecar: Box<Sidecar>,
    },
    /// The same work is already in the library (a redelivery, or another worker first): nothing to
    /// send.
    InPlace {
        /// Where it is, on the store's machine.
        path: std::path::PathBuf,
        /// The sidecar found beside it.
        sidecar: Box<Sidecar>,
    },
}

/// What the store says about itself (`GET /v1/health`), and how its library names outputs, so a
/// worker without the library's config names them as a local worker would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Health {
    /// The store's host.
    pub host: String,
    /// `[transcode] movie-name` of the library.
    pub movie_name: String,
    /// `[transcode] title-name` of the library.
    pub title_name: String,
    /// `[transcode] container` of the library.
    pub container: rafty_core::config::Container,
}

/// An error answer: what went wrong, naming the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// The message.
    pub error: String,
}

/// A finished output in the library (`GET /v1/outputs/<relative path>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Found {
    /// Where it is, on the store's machine.
    pub path: std::path::PathBuf,
    /// Its sidecar.
    pub sidecar: Sidecar,
}

/// The finished steps of a split title (`GET /v1/split/<whole>`), by file name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepFiles {
    /// Each finished step's record.
    pub files: std::collections::BTreeMap<String, rafty_core::split::Record>,
}

/// The store's answer to a step's file (`PUT /v1/split/<whole>/<file>`): the record of what is in
/// place now (201: these bytes; 200: another worker's, sent first, which stands).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStored {
    /// The record beside the file.
    pub record: rafty_core::split::Record,
}
