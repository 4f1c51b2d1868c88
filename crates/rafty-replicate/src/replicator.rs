//! One destination's copier: a [`Processor`] for the shared consumer loop on the destination's own
//! queue, and the probe that holds that loop while the destination is away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};
use rafty_core::Media;
use rafty_core::config::Destination;
use rafty_core::names::{EVENTS_EXCHANGE, RIP_EXCHANGE, rip_routing_key};
use rafty_core::wire::{self, Event};
use rafty_queue::{Broker, Ensured, Incoming, Outcome, Processor, Publisher, SessionTasks};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{Span, debug, error, info, info_span, warn};

use crate::dest::{DestError, Digested, Place, digest_file};
use crate::ledger::{LIBRARY, LedgerFile};
use crate::library::{Entry, Library};

/// The exchange `raftyctl replicate reconcile` sends requests to, routed by destination name.
pub const REQUEST_EXCHANGE: &str = "rafty.replicate";
/// Every kind of image a job can name: data discs are not transcoded, but their images are kept.
const IMAGE_MEDIA: [Media; 3] = [Media::Dvd, Media::Bluray, Media::Data];
/// A copy that fails this many times while its destination is reachable is given up (logged; the
/// audit reports it MISSING and `reconcile` queues it again).
const TRIES: u32 = 4;
/// The ledger's copy at a destination is refreshed at most this often.
const LEDGER_EVERY: Duration = Duration::from_secs(5);

/// A destination's queue.
pub fn queue_name(destination: &str) -> String {
    format!("rafty.replicate.{destination}")
}

/// A request to copy one object (`raftyctl replicate reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyRequest {
    /// The object's key.
    pub key: String,
}

/// Whether a destination is away, and since when.
#[derive(Debug, Default)]
struct Away {
    since: Option<(Instant, String)>,
    reason: String,
    reported: bool,
    /// After "no room": the bytes the copy that failed needs free before it is tried again.
    room: Option<u64>,
}

/// One destination's copier.
pub struct Copier {
    /// The destination's configuration.
    pub dest: Destination,
    /// Its place.
    pub place: Place,
    /// The library.
    pub library: Library,
    /// The ledger.
    pub ledger: LedgerFile,
    /// Holds the consumer loop while the destination is away or disabled.
    pub hold: Arc<watch::Sender<bool>>,
    /// The replicating host.
    pub host: String,
    away: Mutex<Away>,
    tries: Mutex<HashMap<String, u32>>,
    ledger_sent: Mutex<Option<Instant>>,
    /// A copy was made since the ledger's copy at the destination was last refreshed.
    ledger_dirty: std::sync::atomic::AtomicBool,
}

impl Copier {
    /// A copier for `dest`.
    pub fn new(
        dest: Destination,
        place: Place,
        library: Library,
        ledger: LedgerFile,
        host: String,
    ) -> Copier {
        Copier {
            dest,
            place,
            library,
            ledger,
            hold: Arc::new(watch::channel(false).0),
            host,
            away: Mutex::default(),
            tries: Mutex::default(),
            ledger_sent: Mutex::default(),
            ledger_dirty: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The objects a delivery asks for.
    fn wanted(&self, incoming: &Incoming) -> Result<Vec<(Entry, Option<Digested>)>, String> {
        let key = incoming.routing_key.as_str();
        if IMAGE_MEDIA.iter().any(|m| rip_routing_key(*m) == key) {
            let job = incoming.job().as_ref().map_err(|e| e.to_string())?;
            let entry = self.library.image(&job.source.path).ok_or_else(|| {
                format!(
                    "{} is not in the library here (no such file under {})",
                    job.source.path.display(),
                    roots(&self.library)
                )
            })?;
            let known = match (&job.source.sha256, job.source.size) {
                (Some(sha), Some(size)) => Some(Digested {
                    size,
                    sha256: sha.to_ascii_lowercase(),
                }),
                _ => None,
            };
            return Ok(vec![(entry, known)]);
        }
        if key == "rafty.transcode.done" {
            let done: wire::Done = wire::parse(key, incoming.data()).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for o in &done.outputs {
                let [sidecar, video] = self.library.video(&o.path).ok_or_else(|| {
                    format!(
                        "{} is not in the library here (no such file under {})",
                        o.path.display(),
                        self.library.media.display()
                    )
                })?;
                let known = o.sha256.clone().map(|sha256| Digested {
                    size: o.size,
                    sha256,
                });
                out.push((sidecar, None));
                out.push((video, known));
            }
            return Ok(out);
        }
        if incoming.delivery().exchange.as_str() == REQUEST_EXCHANGE {
            let req: CopyRequest = serde_json::from_slice(incoming.data())
                .map_err(|e| format!("not a copy request: {e}"))?;
            let path = self
                .library
                .path_of(&req.key)
                .ok_or_else(|| format!("{} is not a library key", req.key))?;
            return Ok(vec![(
                Entry {
                    kind: Library::kind_of(&req.key),
                    key: req.key,
                    path,
                },
                None,
            )]);
        }
        Ok(Vec::new())
    }

    /// Copy one object; `Err` only for a place that is unusable now.
    async fn copy(&self, entry: &Entry, known: Option<Digested>) -> Result<(), DestError> {
        let name = &self.dest.name;
        let recorded = self
            .ledger
            .read()
            .map_err(|e| DestError::Away(e.to_string()))?
            .objects
            .get(&entry.key)
            .cloned();
        if recorded
            .as_ref()
            .is_some_and(|o| o.copies.contains_key(name))
        {
            debug!(key = %entry.key, "already copied and verified");
            return Ok(());
        }
        let what = match (recorded.map(|o| o.digested()), known) {
            (Some(r), _) => r,
            (None, Some(k)) => k,
            (None, None) => {
                let path = entry.path.clone();
                match tokio::task::spawn_blocking(move || digest_file(&path)).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        warn!(key = %entry.key, error = %e, "cannot read it in the library; not copied (raftyctl audit reports it)");
                        return Ok(());
                    }
                    Err(e) => {
                        warn!(key = %entry.key, error = %e, "hashing failed");
                        return Ok(());
                    }
                }
            }
        };
        let recorded = self
            .ledger
            .update(|l| l.record(&entry.key, entry.kind, &what).map(|_| ()))
            .map_err(|e| DestError::Away(e.to_string()))?
            .0;
        if let Err(conflict) = recorded {
            error!(key = %entry.key, "{conflict}");
            return Ok(());
        }
        let began = Instant::now();
        match self.place.put(&entry.key, &entry.path, &what).await {
            Ok(()) => {
                self.ledger
                    .update(|l| {
                        l.verified(&entry.key, name);
                        // The source hashed right on its way out: the library's copy is good too.
                        l.verified(&entry.key, LIBRARY);
                    })
                    .map_err(|e| DestError::Away(e.to_string()))?;
                self.tries.lock().expect("tries").remove(&entry.key);
                self.ledger_dirty
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                info!(dest = %name, key = %entry.key, bytes = what.size, secs = began.elapsed().as_secs_f64(), "copy verified");
                Ok(())
            }
            Err(e @ DestError::Full(_)) => {
                self.away.lock().expect("away").room = Some(what.size);
                Err(e)
            }
            Err(e) if e.is_place() => Err(e),
            Err(DestError::Missing(m)) => {
                warn!(key = %entry.key, "gone from the library before it was copied: {m}");
                Ok(())
            }
            Err(e @ DestError::Unreadable(_)) if !self.place.mentions(&e.to_string()) => {
                error!(key = %entry.key, error = %e, "cannot read it in the library; not copied (raftyctl audit --repair mends the library from a good copy)");
                Ok(())
            }
            Err(e) => {
                let tries = {
                    let mut t = self.tries.lock().expect("tries");
                    let n = t.entry(entry.key.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                if tries >= TRIES || e.to_string().contains("the ledger says") {
                    self.tries.lock().expect("tries").remove(&entry.key);
                    error!(dest = %name, key = %entry.key, error = %e, tries, "copy given up (raftyctl audit reports it; raftyctl replicate reconcile queues it again)");
                    Ok(())
                } else {
                    warn!(dest = %name, key = %entry.key, error = %e, tries, "copy failed; trying again");
                    tokio::time::sleep(Duration::from_secs(u64::from(tries))).await;
                    Err(DestError::Corrupt(e.to_string()))
                }
            }
        }
    }

    /// Mark the destination away and hold the loop.
    fn went_away(&self, reason: &str) {
        let mut away = self.away.lock().expect("away");
        if away.since.is_none() {
            warn!(dest = %self.dest.name, reason, "destination unusable; holding its backlog and trying again every probe interval");
            away.since = Some((Instant::now(), wire_now()));
            away.reported = false;
        }
        away.reason = reason.to_owned();
        self.hold.send_replace(true);
    }

    /// Refresh the ledger's copy at the destination after copies were made, at most every few
    /// seconds (the probe catches up with the last ones).
    async fn send_ledger(&self) {
        {
            let mut sent = self.ledger_sent.lock().expect("ledger_sent");
            if sent.is_some_and(|t| t.elapsed() < LEDGER_EVERY)
                || !self
                    .ledger_dirty
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            *sent = Some(Instant::now());
        }
        let sent = match self.ledger.read() {
            Ok(ledger) => self
                .place
                .put_bytes("ledger.json", ledger.to_json())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            self.ledger_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
            debug!(dest = %self.dest.name, error = %e, "the ledger's copy was not refreshed; trying again later");
        }
    }

    /// Hold the loop while the destination is disabled or away; report it when away too long.
    pub async fn probe_loop(
        &self,
        interval: Duration,
        away_after: Duration,
        broker: Broker,
        confirm_timeout: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let disabled = self
                .ledger
                .read()
                .map(|l| l.disabled.contains(&self.dest.name))
                .unwrap_or(false);
            if disabled {
                if !*self.hold.borrow() {
                    info!(dest = %self.dest.name, "disabled (raftyctl replicate enable resumes it); its backlog waits in its queue");
                }
                self.hold.send_replace(true);
            } else {
                let room = self.away.lock().expect("away").room;
                match self.place.probe(room).await {
                    Ok(()) => {
                        let was = {
                            let mut away = self.away.lock().expect("away");
                            away.room = None;
                            away.since.take()
                        };
                        if let Some((since, _)) = was {
                            info!(dest = %self.dest.name, away_secs = since.elapsed().as_secs(), "destination back; draining its backlog");
                        }
                        if *self.hold.borrow() {
                            self.hold.send_replace(false);
                        }
                        self.send_ledger().await;
                    }
                    Err(e) => {
                        self.went_away(&e.to_string());
                        self.report_if_long(away_after, &broker, confirm_timeout)
                            .await;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn report_if_long(&self, away_after: Duration, broker: &Broker, timeout: Duration) {
        let event = {
            let mut away = self.away.lock().expect("away");
            let due = match &away.since {
                Some((since, at)) if !away.reported && since.elapsed() >= away_after => {
                    Some(at.clone())
                }
                _ => None,
            };
            due.map(|since| {
                away.reported = true;
                Event::ReplicaAway(wire::ReplicaAway {
                    destination: self.dest.name.clone(),
                    reason: away.reason.clone(),
                    since,
                    host: self.host.clone(),
                })
            })
        };
        let Some(event) = event else { return };
        warn!(dest = %self.dest.name, reason = %self.away.lock().expect("away").reason, "destination away");
        let name = format!("rafty-replicate@{}", self.host);
        match Publisher::connect(broker, &name, "rafty-replicate", timeout, None).await {
            Ok((publisher, _)) => {
                if let Err(e) = publisher.publish_event(&event).await {
                    warn!(error = %e, "the away event was not published");
                }
                publisher.close().await;
            }
            Err(e) => warn!(error = %e, "the away event was not published"),
        }
    }
}

impl Processor for Copier {
    async fn connected(
        &self,
        conn: &Arc<Connection>,
        _ensured: &Ensured,
    ) -> Result<SessionTasks, rafty_queue::Error> {
        declare(conn, &self.dest.name).await?;
        Ok(SessionTasks::new())
    }

    fn span(&self, incoming: &Incoming) -> Span {
        info_span!("copy", dest = %self.dest.name, routing_key = %incoming.routing_key)
    }

    async fn process(&self, incoming: &Incoming, _events: &Publisher) -> Outcome {
        let wanted = match self.wanted(incoming) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "nothing to copy for this message");
                return Outcome::Consumed;
            }
        };
        for (entry, known) in wanted {
            loop {
                let copied = tokio::select! {
                    r = self.copy(&entry, known.clone()) => r,
                    _ = incoming.cancel.cancelled() => return Outcome::Release,
                };
                match copied {
                    Ok(()) => break,
                    Err(e) if e.is_place() => {
                        self.went_away(&e.to_string());
                        return Outcome::Release;
                    }
                    // A failed attempt at this object: the next try is made in place.
                    Err(_) => continue,
                }
            }
        }
        self.send_ledger().await;
        Outcome::Consumed
    }
}

/// Declare a destination's quorum queue, bound to every image queued and every output done, and
/// the request exchange `reconcile` uses.
pub async fn declare(conn: &Connection, destination: &str) -> Result<(), rafty_queue::Error> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|source| rafty_queue::Error::Amqp {
            what: "opening a channel",
            source,
        })?;
    let queue = queue_name(destination);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|source| rafty_queue::Error::Declare {
            what: format!("queue {queue}"),
            source,
            hint: " (it must be a durable quorum queue)",
        })?;
    channel
        .exchange_declare(
            REQUEST_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| rafty_queue::Error::Declare {
            what: format!("exchange {REQUEST_EXCHANGE}"),
            source,
            hint: "",
        })?;
    let images: Vec<String> = IMAGE_MEDIA.iter().map(|m| rip_routing_key(*m)).collect();
    let bindings = images.iter().map(|k| (RIP_EXCHANGE, k.as_str())).chain([
        (EVENTS_EXCHANGE, "rafty.transcode.done"),
        (REQUEST_EXCHANGE, destination),
    ]);
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| rafty_queue::Error::Declare {
                what: format!("binding {exchange} -[{key}]-> {queue}"),
                source,
                hint: "",
            })?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

fn roots(library: &Library) -> String {
    library
        .image_roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn wire_now() -> String {
    crate::ledger::now()
}
