//! Rafty's acceptance tests that can share one RabbitMQ node: one test binary, one link, one broker.
//!
//! Every module here gets its broker from [`rafty_testkit::shared_broker`], a single node started on
//! first use and stopped when this binary exits; each test works in a vhost of its own
//! ([`rafty_testkit::Env::new`]), with broker users named after that vhost (`privilege`), so no test
//! sees another's queues, exchanges or users. `eject` and `units` need no broker at all (a closed port
//! on purpose, and the udev rule and systemd units checked with the real tools); they are here only so
//! they are linked once with the rest.
//!
//! These stay in binaries of their own, because each reshapes or kills its broker, or the machine's
//! network, and must not do it to the node or the processes the tests here share:
//!
//! - `tests/chaos.rs`: the soak stops and restarts its broker mid-run, SIGKILLs workers and a rip, and
//!   then asserts that no HandBrakeCLI is left anywhere on the machine (which would see this binary's
//!   encodes); it also loads both cores for minutes, which would make the timed tests here flaky.
//! - `tests/reconnect.rs`: stops and restarts its broker.
//! - `tests/timeout.rs`: nodes with other settings (`consumer_timeout = 2000`, the shipped
//!   `config/rabbitmq.conf`).
//! - `tests/tls.rs`: a node with a TLS listener and a certificate from a test CA, shared by its tests.
//! - `tests/hosts.rs`: a broker, workers and a rip host in network namespaces on a bridge, a link cut
//!   mid-encode.
//! - `tests/store.rs`: workers without shared storage in network namespaces, a `rafty-store` on the
//!   bridge, links cut and a store killed mid-transfer.
//! - `tests/cluster.rs`: a three-node RabbitMQ cluster whose nodes it kills, restarts and freezes.

mod dashboard;
mod eject;
mod hostile;
mod observe;
mod privilege;
mod protocol;
mod rip;
mod spine;
mod split;
mod units;
