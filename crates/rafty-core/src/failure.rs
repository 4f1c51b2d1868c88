//! What can go wrong with a job, and the one function that decides what happens next
//! (docs/design.md, "Failure classes").

use std::fmt;

/// What happens to a job after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It will not pass by trying again: park the job in the dead-letter queue with the reason.
    Permanent,
    /// It may pass later: copy the job to the next rung of the retry ladder (dead letter when none is left).
    Retryable,
    /// Not the job's fault (the worker is stopping): give it back to the queue for another worker.
    Requeue,
}

impl Class {
    /// The name written in the `x-rafty-error-class` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Permanent => "permanent",
            Class::Retryable => "retryable",
            Class::Requeue => "requeue",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job failure, as observed by the worker. Each variant carries what a user needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The message is not a usable job (not JSON, wrong type, missing field, unsafe output name).
    BadMessage(String),
    /// The source path lies outside every allowed source root (after path mapping and canonicalisation).
    SourceOutsideRoots(String),
    /// The source is missing or unreadable; shared storage may lag behind the producer.
    SourceUnavailable(String),
    /// The job names a preset this worker does not have.
    UnknownPreset(String),
    /// HandBrakeCLI exited with this code; the message carries its complaint.
    HandBrakeExit {
        /// Exit status of HandBrakeCLI.
        code: i32,
        /// What HandBrake said about it (from its log).
        message: String,
    },
    /// HandBrakeCLI was killed by a signal the worker did not send.
    HandBrakeKilled(String),
    /// HandBrakeCLI made no progress for too long and was stopped.
    Stalled(String),
    /// The output directory cannot be written (permissions, read-only file system).
    OutputUnwritable(String),
    /// No space left for the output.
    DiskFull(String),
    /// The encoded output is shorter than its title, or unreadable: a truncated encode.
    OutputTruncated(String),
    /// The output name is taken by a file that another job produced from another source.
    OutputConflict(String),
    /// The worker was asked to stop in the middle of the job.
    Shutdown,
    /// `rafty-store` could not be reached or did not answer well (down, cut, a server error) for
    /// longer than the worker resumes a transfer.
    StoreUnavailable(String),
    /// `rafty-store` refused this worker's token: the worker's fault, not the job's, so the job goes
    /// back to the queue and the worker stops taking jobs until its token works.
    StoreUnauthorized(String),
    /// The image fetched from the store twice did not have the job's SHA-256 (both digests named).
    SourceCorrupt(String),
    /// The broker did not take what the job needed to publish (title jobs, an event): not the job's
    /// fault, so it goes back to the queue.
    Broker(String),
}

impl Failure {
    /// A short stable name for logs, metrics and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::BadMessage(_) => "bad-message",
            Failure::SourceOutsideRoots(_) => "source-outside-roots",
            Failure::SourceUnavailable(_) => "source-unavailable",
            Failure::UnknownPreset(_) => "unknown-preset",
            Failure::HandBrakeExit { .. } => "handbrake-exit",
            Failure::HandBrakeKilled(_) => "handbrake-killed",
            Failure::Stalled(_) => "stalled",
            Failure::OutputUnwritable(_) => "output-unwritable",
            Failure::DiskFull(_) => "disk-full",
            Failure::OutputTruncated(_) => "output-truncated",
            Failure::OutputConflict(_) => "output-conflict",
            Failure::Shutdown => "shutdown",
            Failure::Broker(_) => "broker",
            Failure::StoreUnavailable(_) => "store-unavailable",
            Failure::StoreUnauthorized(_) => "store-unauthorized",
            Failure::SourceCorrupt(_) => "source-corrupt",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadMessage(m) => write!(f, "bad job message: {m}"),
            Failure::SourceOutsideRoots(m) => write!(f, "source outside the allowed roots: {m}"),
            Failure::SourceUnavailable(m) => write!(f, "source unavailable: {m}"),
            Failure::UnknownPreset(m) => write!(f, "unknown preset: {m}"),
            Failure::HandBrakeExit { code, message } => {
                write!(f, "HandBrakeCLI exited with status {code}: {message}")
            }
            Failure::HandBrakeKilled(m) => write!(f, "HandBrakeCLI was killed: {m}"),
            Failure::Stalled(m) => write!(f, "HandBrakeCLI stalled: {m}"),
            Failure::OutputUnwritable(m) => write!(f, "output not writable: {m}"),
            Failure::DiskFull(m) => write!(f, "disk full: {m}"),
            Failure::OutputTruncated(m) => write!(f, "output failed verification: {m}"),
            Failure::OutputConflict(m) => write!(f, "output name taken: {m}"),
            Failure::Shutdown => write!(f, "the worker was asked to stop"),
            Failure::Broker(m) => write!(f, "the broker did not take a publish: {m}"),
            Failure::StoreUnavailable(m) => write!(f, "store unavailable: {m}"),
            Failure::StoreUnauthorized(m) => write!(f, "store refused this worker: {m}"),
            Failure::SourceCorrupt(m) => write!(f, "source corrupt: {m}"),
        }
    }
}

/// Decide what happens after a failure. The one place this decision is made.
pub fn classify(failure: &Failure) -> Class {
    match failure {
        Failure::BadMessage(_)
        | Failure::SourceOutsideRoots(_)
        | Failure::UnknownPreset(_)
        | Failure::OutputConflict(_)
        | Failure::SourceCorrupt(_) => Class::Permanent,
        // 2: no title, unreadable source, unknown preset: the same input gives the same answer.
        Failure::HandBrakeExit { code: 2, .. } => Class::Permanent,
        // 3 is an initialisation or output failure; 1 is a cancel the worker did not ask for; anything
        // else unknown is given the benefit of the doubt, and the ladder bounds the retries.
        Failure::HandBrakeExit { .. } => Class::Retryable,
        Failure::SourceUnavailable(_)
        | Failure::HandBrakeKilled(_)
        | Failure::Stalled(_)
        | Failure::OutputUnwritable(_)
        | Failure::DiskFull(_)
        | Failure::OutputTruncated(_)
        | Failure::StoreUnavailable(_) => Class::Retryable,
        Failure::Shutdown | Failure::Broker(_) | Failure::StoreUnauthorized(_) => Class::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_the_class_design_md_gives_it() {
        let m = || "m".to_owned();
        let hb = |code| Failure::HandBrakeExit { code, message: m() };
        let table = [
            (Failure::BadMessage(m()), Class::Permanent),
            (Failure::SourceOutsideRoots(m()), Class::Permanent),
            (Failure::UnknownPreset(m()), Class::Permanent),
            (Failure::OutputConflict(m()), Class::Permanent),
            (hb(2), Class::Permanent),
            (Failure::SourceUnavailable(m()), Class::Retryable),
            (hb(3), Class::Retryable),
            (hb(1), Class::Retryable),
            (hb(139), Class::Retryable),
            (Failure::OutputUnwritable(m()), Class::Retryable),
            (Failure::DiskFull(m()), Class::Retryable),
            (Failure::OutputTruncated(m()), Class::Retryable),
            (Failure::Stalled(m()), Class::Retryable),
            (Failure::HandBrakeKilled(m()), Class::Retryable),
            (Failure::Shutdown, Class::Requeue),
            (Failure::Broker(m()), Class::Requeue),
            (Failure::StoreUnavailable(m()), Class::Retryable),
            (Failure::StoreUnauthorized(m()), Class::Requeue),
            (Failure::SourceCorrupt(m()), Class::Permanent),
        ];
        for (failure, want) in table {
            assert_eq!(classify(&failure), want, "{failure:?}");
        }
    }

    #[test]
    fn messages_carry_the_detail() {
        let f = Failure::HandBrakeExit {
            code: 2,
            message: "No title found.".into(),
        };
        assert_eq!(
            f.to_string(),
            "HandBrakeCLI exited with status 2: No title found."
        );
        assert_eq!(f.kind(), "handbrake-exit");
    }
}
