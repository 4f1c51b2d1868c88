//! `rafty-replicate`, Rafty's replicator, and the ledger and audit `raftyctl` shares with it.
//!
//! Every disc image queued (by `rip` or `raftyctl submit`) and every video finished (with its
//! sidecar) is copied to each destination in `[replicate] destinations`, verified by SHA-256, seconds
//! later. Each destination has its own durable quorum queue, `rafty.replicate.<name>`, bound to the
//! job messages on `rafty.rip` and to `rafty.transcode.done`; a destination that is away (a USB disk
//! unplugged, an S3 server down, a full disk) keeps its backlog there, its consumer held, and drains it
//! when a probe finds it back. A delivery is acked only once the copy exists and read back right.
//!
//! Layout:
//! - [`dest`]: the destinations behind one interface ([`dest::Place`]): a directory, or S3 through
//!   the `object_store` crate; temporary name, read back, then named.
//! - [`ledger`]: what each object is and when each copy was last verified, under a file lock.
//! - [`library`]: the library's keys (`iso/…`, `media/…`) and where they live here.
//! - [`replicator`]: a destination's copier (a [`rafty_queue::Processor`]) and its probe.
//! - [`audit`]: `raftyctl audit`, `raftyctl restore-test`, and what `--repair` does.
//!
//! [`run`] is the whole replicator; `main.rs` is glue over the program prelude.

pub mod audit;
pub mod dest;
pub mod ledger;
pub mod library;
pub mod replicator;

use std::sync::Arc;
use std::time::Duration;

use rafty_core::config::Loaded;
use rafty_queue::{Broker, ConsumerOptions, Shutdown, Topology};
use tracing::{info, warn};

pub use dest::{DestError, Digested, Place};
pub use ledger::{LIBRARY, Ledger, LedgerFile};
pub use library::Library;
pub use replicator::{Copier, CopyRequest, REQUEST_EXCHANGE, queue_name};

/// Longest wait between two attempts to reach the broker.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Why the replicator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[replicate] destinations` is empty.
    #[error(
        "{0}: [replicate] destinations is empty: add one, e.g. destinations = [{{ name = \"usb\", url = \"file:///mnt/usb/rafty\" }}]"
    )]
    NoDestinations(String),
    /// A destination cannot be set up.
    #[error("{0}")]
    Destination(String),
    /// The broker URLs are wrong.
    #[error("{0}")]
    Broker(String),
}

/// Run the replicator until `shutdown` stops it: one consumer loop per destination.
pub async fn run(loaded: Loaded, shutdown: Shutdown) -> Result<(), StartError> {
    let config = &loaded.config.replicate;
    if config.destinations.is_empty() {
        return Err(StartError::NoDestinations(loaded.source_name()));
    }
    let urls = loaded
        .amqp_urls()
        .map_err(|e| StartError::Broker(e.to_string()))?;
    let broker = Broker::new(urls).map_err(|e| StartError::Broker(e.to_string()))?;
    let library = Library::from_config(&loaded.config);
    let ledger = LedgerFile::new(&config.ledger);
    let host = loaded.host();
    let mut copiers = Vec::new();
    for d in &config.destinations {
        let place = Place::open(d).map_err(StartError::Destination)?;
        copiers.push(Arc::new(Copier::new(
            d.clone(),
            place,
            library.clone(),
            ledger.clone(),
            host.clone(),
        )));
    }
    info!(
        config = %loaded.source_name(),
        broker = %broker.shown(),
        ledger = %config.ledger.display(),
        destinations = %copiers.iter().map(|c| format!("{}={}", c.dest.name, c.place.describe())).collect::<Vec<_>>().join(", "),
        "rafty-replicate starting"
    );
    let stop_probes = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for copier in &copiers {
        // Probe once before consuming, so a destination that is away does not churn its backlog.
        if let Err(e) = copier.place.probe(None).await {
            copier.hold.send_replace(true);
            warn!(dest = %copier.dest.name, reason = %e, "destination unusable at start; holding its backlog");
        }
        let probe = copier.clone();
        let (interval, away_after) = (config.probe_interval, config.away_after);
        let (b, timeout, stop) = (
            broker.clone(),
            loaded.config.broker.confirm_timeout,
            stop_probes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            probe
                .probe_loop(interval, away_after, b, timeout, stop)
                .await;
        }));
        let options = ConsumerOptions {
            broker: broker.clone(),
            app_id: "rafty-replicate".to_owned(),
            host: host.clone(),
            queue: queue_name(&copier.dest.name),
            noun: "copy request",
            topology: Topology::from_config(&loaded.config.transcode),
            confirm_timeout: loaded.config.broker.confirm_timeout,
            max_deliveries: None,
            reconnect_max: RECONNECT_MAX,
            hold: copier.hold.clone(),
        };
        let (copier, shutdown) = (copier.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = rafty_queue::run(&options, copier.as_ref(), &shutdown).await {
                warn!(dest = %copier.dest.name, error = %e, "the consumer loop stopped");
            }
        }));
    }
    shutdown.draining().await;
    // The consumer loops finish the copy in hand and return; then the probes stop.
    let (consumers, probes): (Vec<_>, Vec<_>) =
        tasks.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    for (_, t) in consumers {
        let _ = t.await;
    }
    stop_probes.cancel();
    for (_, t) in probes {
        let _ = t.await;
    }
    info!("rafty-replicate stopped");
    Ok(())
}
