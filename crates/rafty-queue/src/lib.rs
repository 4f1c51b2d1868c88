//! Rafty on RabbitMQ (lapin): the topology, a confirmed publisher, and the worker's consumer loop.
//!
//! - [`topology`] declares every exchange and queue of DESIGN.md's contract, idempotently; every program
//!   calls it at start-up, so a job published before any worker ran is queued, not dropped.
//! - [`publisher::Publisher`] publishes with publisher confirms (and `mandatory` for jobs), with a
//!   timeout, and turns a nack, a return or a lost connection into an error that says so.
//! - [`consumer`] is the worker loop: prefetch 1, one [`consumer::Processor`] call per delivery, and
//!   one function, [`consumer::settle`], mapping its [`consumer::Outcome`] to ack, retry rung, dead
//!   letter or requeue, with every copy confirmed before the original is acked. It reconnects with
//!   capped backoff and drains on shutdown.

pub mod connection;
pub mod consumer;
pub mod control;
pub mod outbox;
pub mod publisher;
pub mod topology;

pub use connection::{connect, mask_url};
pub use consumer::{
    Incoming, Outcome, Processor, Shutdown, Stats, WorkerOptions, run_worker, settle,
};
pub use outbox::{Entry as OutboxEntry, Outbox};
pub use publisher::{PublishError, Publisher};
pub use topology::{Ensured, Topology, declare, ensure};

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to RabbitMQ at {url}: {source}{hint}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// lapin's error.
        source: lapin::Error,
        /// What to check, when the error says more than lapin's message does.
        hint: String,
    },
    /// The URL, or its TLS settings, cannot be used.
    #[error("{url}: {message}")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Declaring the topology failed (often: an existing queue with other arguments).
    #[error("cannot declare {what}: {source}{hint}")]
    Declare {
        /// The exchange or queue.
        what: String,
        /// lapin's error.
        source: lapin::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Any other AMQP operation failed.
    #[error("{what}: {source}")]
    Amqp {
        /// What was being done.
        what: &'static str,
        /// lapin's error.
        source: lapin::Error,
    },
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker cancelled the consumer or the delivery stream ended.
    #[error("the broker ended the consumer on {0}")]
    ConsumerEnded(String),
}
