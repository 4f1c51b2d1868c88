//! Names that users, scripts and third-party clients rely on (docs/protocol.md, "Topology" and "The job
//! message"): exchanges, queues, routing keys, message type, headers and environment variables.

/// Topic exchange that producers (rip, `raftyctl submit`, third-party clients) publish ISO jobs to.
pub const RIP_EXCHANGE: &str = "rafty.rip";
/// Prefix of the routing keys on [`RIP_EXCHANGE`]; the media name follows (`rafty.rip.iso.dvd`).
pub const RIP_ROUTING_PREFIX: &str = "rafty.rip.iso";
/// The work queue (quorum) that `transcoded` workers consume as competing consumers.
pub const WORK_QUEUE: &str = "rafty.transcode";
/// Topic exchange on which workers announce what they do (`rafty.transcode.done`, ...).
pub const EVENTS_EXCHANGE: &str = "rafty.transcode";
/// Fanout exchange for parked jobs; the work queue dead-letters here as well.
pub const DEAD_EXCHANGE: &str = "rafty.transcode.dead";
/// Quorum queue bound to [`DEAD_EXCHANGE`] holding parked jobs.
pub const DEAD_QUEUE: &str = "rafty.transcode.dead";
/// Fanout exchange for control requests to every worker (`raftyctl status`): each worker binds an
/// exclusive queue and answers on the request's `reply_to` (RabbitMQ direct reply-to).
pub const CONTROL_EXCHANGE: &str = "rafty.control";
/// Prefix of the retry ladder's queues: `rafty.transcode.retry.<delay>`.
pub const RETRY_QUEUE_PREFIX: &str = "rafty.transcode.retry";

/// AMQP `type` property of a job message, version 1.
pub const JOB_TYPE: &str = "rafty.job.v1";
/// AMQP `content_type` of every message Rafty publishes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Header: how many times the job has been tried before this delivery (0 on the first).
pub const HEADER_ATTEMPT: &str = "x-rafty-attempt";
/// Dead-letter header: the failure class (`permanent` or `retryable` when the ladder ran out).
pub const HEADER_ERROR_CLASS: &str = "x-rafty-error-class";
/// Dead-letter header: the human-readable reason.
pub const HEADER_ERROR: &str = "x-rafty-error";
/// Dead-letter header: the host of the worker that parked the job.
pub const HEADER_HOST: &str = "x-rafty-host";
/// Dead-letter header: when the job was parked (RFC 3339, UTC).
pub const HEADER_FAILED_AT: &str = "x-rafty-failed-at";
/// Dead-letter and retry header: the routing key the job first arrived with.
pub const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-rafty-original-routing-key";
/// Dead-letter and retry header: the exchange the job first arrived on.
pub const HEADER_ORIGINAL_EXCHANGE: &str = "x-rafty-original-exchange";

/// Environment variable naming the configuration file (overridden by `--config`).
pub const ENV_CONFIG: &str = "RAFTY_CONFIG";
/// Environment variable that overrides `[broker] url`.
pub const ENV_AMQP_URL: &str = "RAFTY_AMQP_URL";
/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rafty/rafty.toml";

/// Routing key for an ISO job of the given media on [`RIP_EXCHANGE`].
pub fn rip_routing_key(media: crate::Media) -> String {
    format!("{RIP_ROUTING_PREFIX}.{}", media.as_str())
}

/// Routing key of a worker event on [`EVENTS_EXCHANGE`], e.g. `rafty.transcode.done`.
pub fn event_routing_key(event: &str) -> String {
    format!("{EVENTS_EXCHANGE}.{event}")
}

/// Name of the retry queue for one rung of the ladder, e.g. `rafty.transcode.retry.30s`.
pub fn retry_queue(label: &str) -> String {
    format!("{RETRY_QUEUE_PREFIX}.{label}")
}
