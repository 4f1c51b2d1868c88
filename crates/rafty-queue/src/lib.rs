//! Rafty on RabbitMQ (lapin): the topology, a confirmed publisher, and the one consumer loop.
//!
//! Layout:
//! - [`topology`] declares every exchange and queue of the contract (docs/protocol.md, "Topology"),
//!   idempotently, or checks them for a user without configure rights; every program calls it at start-up,
//!   so a job published before any worker ran is queued, not dropped.
//! - [`connection`] opens a connection (plain or TLS) and masks passwords in what it logs;
//!   [`Broker`] is the connector to one node or any node of a cluster, with fail-over.
//! - [`publisher::Publisher`] publishes with publisher confirms (and `mandatory` for jobs), with a
//!   timeout, and turns a nack, a return or a lost connection into an error that says so; events are
//!   the typed [`rafty_core::wire::Event`].
//! - [`consumer`] is the consumer loop every daemon runs: prefetch 1, one [`consumer::Processor`] call
//!   per delivery, reconnection with capped backoff, drain and abort on [`consumer::Shutdown`].
//! - [`watchdog`] notices the broker taking a delivery in hand back, so its work stops at once.
//! - [`settle`]: [`settle::verdict`], the one pure function from an [`settle::Outcome`] to ack, retry
//!   rung, dead letter or requeue, and [`settle::settle`], which does it with every copy confirmed
//!   before the original is acked; [`headers`] builds the copies' headers.
//! - [`control`] answers and asks `rafty.control` requests (`raftyctl status`, `drain`, `resume`).
//! - [`outbox`] keeps jobs on disk while the broker is away.

pub mod connection;
pub mod consumer;
pub mod control;
pub mod headers;
pub mod outbox;
pub mod publisher;
pub mod settle;
pub mod topology;
pub mod watchdog;

pub use connection::{Broker, connect, mask_url};
pub use consumer::{ConsumerOptions, Incoming, Processor, SessionTasks, Shutdown, Stats, run};
pub use outbox::{Entry as OutboxEntry, Outbox};
pub use publisher::{PublishError, Publisher};
pub use settle::{Action, Outcome, Settled, settle, verdict};
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
    /// A node accepted the connection but did not finish a step in time (a frozen node).
    #[error("RabbitMQ at {url} did not finish {what} within {} ms", timeout.as_millis())]
    Stalled {
        /// The URL, password masked.
        url: String,
        /// The step.
        what: &'static str,
        /// The bound.
        timeout: std::time::Duration,
    },
    /// No node of the cluster could be used in one pass.
    #[error("cannot use any of the {count} RabbitMQ nodes: {errors}")]
    NoNode {
        /// How many nodes were tried.
        count: usize,
        /// Each node's error, in the order tried.
        errors: String,
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
