//! `raftyctl replicate`, `raftyctl audit` and `raftyctl restore-test`: the copies of the library, over
//! the ledger and destinations of `rafty_replicate` (docs/replicate.md).

use std::time::Duration;

use clap::{Args, Subcommand};
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rafty_core::config::{Loaded, mask_url};
use rafty_core::exit;
use rafty_core::wire::{self, Event};
use rafty_replicate::audit::{self, Budget, Places, Report};
use rafty_replicate::{CopyRequest, LedgerFile, Library, Place, REQUEST_EXCHANGE, queue_name};
use serde::Serialize;

use crate::{Failure, close, open};

/// `raftyctl replicate` commands.
#[derive(Debug, Subcommand)]
pub enum ReplicateCommand {
    /// Each destination: its backlog, whether it is enabled, how many objects it has verified
    Status {
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Copy to NAME again after `disable` (its backlog drains)
    Enable {
        /// Destination name, as in [replicate] destinations
        name: String,
    },
    /// Stop copying to NAME; what it misses waits in its queue
    Disable {
        /// Destination name, as in [replicate] destinations
        name: String,
    },
    /// Queue every library object that NAME (default: every destination) has no verified copy of;
    /// prints "NAME<TAB>KEY" per object queued
    Reconcile {
        /// Destination name (default: all)
        name: Option<String>,
    },
}

/// `raftyctl audit` flags.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this place: `library` or a destination's name
    #[arg(long = "dest", value_name = "PLACE")]
    pub place: Option<String>,
    /// Check this share of all copies, least recently verified first
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    pub percent: f64,
    /// Skip copies verified more recently than this (e.g. 7d)
    #[arg(long, value_parser = duration, value_name = "DUR")]
    pub older_than: Option<Duration>,
    /// Stop after this long; the rest waits for the next run (e.g. 4h)
    #[arg(long, value_parser = duration, value_name = "DUR")]
    pub max_duration: Option<Duration>,
    /// Also decode videos (ffmpeg) and scan images (HandBrake) that hash right
    #[arg(long)]
    pub decode: bool,
    /// Mend each finding from a copy that verifies (the library included)
    #[arg(long)]
    pub repair: bool,
    /// One JSON object instead of lines
    #[arg(long)]
    pub json: bool,
}

/// `raftyctl restore-test` flags.
#[derive(Debug, Args)]
pub struct RestoreTestArgs {
    /// Only from this destination
    #[arg(long = "dest", value_name = "NAME")]
    pub place: Option<String>,
    /// One JSON object instead of a line
    #[arg(long)]
    pub json: bool,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "{s:?} is not a percentage between 0 (exclusive) and 100"
        )),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    rafty_core::config::parse_duration(s)
}

fn ledger(loaded: &Loaded) -> LedgerFile {
    LedgerFile::new(&loaded.config.replicate.ledger)
}

fn places(loaded: &Loaded) -> Result<Places, Failure> {
    let mut destinations = Vec::new();
    for d in &loaded.config.replicate.destinations {
        let place = Place::open(d).map_err(|e| Failure::new(exit::CONFIG, e))?;
        destinations.push((d.name.clone(), place));
    }
    Ok(Places {
        library: Library::from_config(&loaded.config),
        destinations,
        handbrake: loaded.config.transcode.handbrake.clone(),
    })
}

fn known(loaded: &Loaded, name: &str) -> Result<(), Failure> {
    let names: Vec<_> = loaded
        .config
        .replicate
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    if names.contains(&name) {
        Ok(())
    } else {
        Err(Failure::new(
            exit::DATAERR,
            format!(
                "{name} is not a destination in {} (they are: {})",
                loaded.source_name(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }
}

/// Run a `raftyctl replicate` command.
pub(crate) async fn run(loaded: &Loaded, cmd: ReplicateCommand) -> Result<(), Failure> {
    match cmd {
        ReplicateCommand::Status { json } => status(loaded, json).await,
        ReplicateCommand::Enable { name } => switch(loaded, &name, true),
        ReplicateCommand::Disable { name } => switch(loaded, &name, false),
        ReplicateCommand::Reconcile { name } => reconcile(loaded, name).await,
    }
}

fn switch(loaded: &Loaded, name: &str, on: bool) -> Result<(), Failure> {
    known(loaded, name)?;
    ledger(loaded)
        .update(|l| {
            if on {
                l.disabled.remove(name);
            } else {
                l.disabled.insert(name.to_owned());
            }
        })
        .map_err(|e| Failure::new(1, e.to_string()))?;
    eprintln!(
        "{name} {}",
        if on {
            "enabled: rafty-replicate drains its backlog within a probe interval"
        } else {
            "disabled: what it misses waits in its queue until `raftyctl replicate enable`"
        }
    );
    Ok(())
}

/// One destination in `replicate status`.
#[derive(Serialize)]
struct DestStatus {
    name: String,
    url: String,
    queue: String,
    waiting: u32,
    consumers: u32,
    enabled: bool,
    objects: usize,
    verified: usize,
}

async fn status(loaded: &Loaded, json: bool) -> Result<(), Failure> {
    let ledger = ledger(loaded)
        .read()
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let (conn, _publisher, _) = open(loaded).await?;
    let mut out = Vec::new();
    for d in &loaded.config.replicate.destinations {
        let queue = queue_name(&d.name);
        // A channel per queue: a passive declare of a queue that does not exist closes its channel.
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
        let (waiting, consumers) = match channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(q) => (q.message_count(), q.consumer_count()),
            // Not declared yet: rafty-replicate has not run.
            Err(_) => (0, 0),
        };
        let _ = channel.close(200, "done".into()).await;
        out.push(DestStatus {
            name: d.name.clone(),
            url: mask_url(&d.url),
            queue,
            waiting,
            consumers,
            enabled: !ledger.disabled.contains(&d.name),
            objects: ledger.objects.len(),
            verified: ledger
                .objects
                .values()
                .filter(|o| o.copies.contains_key(&d.name))
                .count(),
        });
    }
    close(&conn).await;
    if json {
        println!(
            "{}",
            serde_json::json!({ "ledger": loaded.config.replicate.ledger, "destinations": out })
        );
        return Ok(());
    }
    println!(
        "{:<12} {:>8} {:>9} {:>8} {:>9}  URL",
        "DESTINATION", "WAITING", "CONSUMERS", "ENABLED", "VERIFIED"
    );
    for d in &out {
        println!(
            "{:<12} {:>8} {:>9} {:>8} {:>5}/{:<3}  {}",
            d.name,
            d.waiting,
            d.consumers,
            if d.enabled { "yes" } else { "no" },
            d.verified,
            d.objects,
            d.url
        );
    }
    if out.is_empty() {
        eprintln!(
            "no destinations: set [replicate] destinations in {}",
            loaded.source_name()
        );
    }
    Ok(())
}

async fn reconcile(loaded: &Loaded, only: Option<String>) -> Result<(), Failure> {
    if let Some(n) = &only {
        known(loaded, n)?;
    }
    let names: Vec<String> = loaded
        .config
        .replicate
        .destinations
        .iter()
        .map(|d| d.name.clone())
        .filter(|n| only.as_ref().is_none_or(|o| o == n))
        .collect();
    let ledger = ledger(loaded)
        .read()
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let entries = Library::from_config(&loaded.config).scan();
    let (conn, publisher, _) = open(loaded).await?;
    // The destinations' queues and the request exchange, in case rafty-replicate never ran.
    for n in &names {
        rafty_replicate::replicator::declare(&conn, n)
            .await
            .map_err(|e| Failure::new(exit::PROTOCOL, e.to_string()))?;
    }
    let mut queued = 0;
    for n in &names {
        for e in &entries {
            let has = ledger
                .objects
                .get(&e.key)
                .is_some_and(|o| o.copies.contains_key(n));
            if has {
                continue;
            }
            let body = serde_json::to_vec(&CopyRequest { key: e.key.clone() })
                .expect("requests serialize");
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            publisher
                .publish(REQUEST_EXCHANGE, n, &body, props, true)
                .await
                .map_err(|err| {
                    Failure::new(exit::PROTOCOL, format!("queueing {}: {err}", e.key))
                })?;
            println!("{n}\t{}", e.key);
            queued += 1;
        }
    }
    close(&conn).await;
    eprintln!("{queued} objects queued for {}", names.join(", "));
    Ok(())
}

/// `raftyctl audit`: exit 0 nothing found (or every finding mended), 1 findings remain, 2 the audit
/// itself failed.
pub(crate) async fn audit(loaded: &Loaded, args: AuditArgs) -> Result<(), Failure> {
    let places = places(loaded).map_err(|e| Failure::new(2, e.message))?;
    let file = ledger(loaded);
    let budget = Budget {
        place: args.place,
        percent: args.percent,
        older_than: args.older_than,
        max_duration: args.max_duration,
        decode: args.decode,
        repair: args.repair,
    };
    let report = audit::audit(&places, &file, &budget, loaded.config.replicate.max_age)
        .await
        .map_err(|e| Failure::new(2, format!("audit failed: {e}")))?;
    print_report(&report, args.json);
    announce(loaded, &report).await;
    match report.unresolved() {
        0 => Ok(()),
        n => Err(Failure::new(
            1,
            format!(
                "{n} finding(s){}",
                if args.repair {
                    " could not be mended"
                } else {
                    "; raftyctl audit --repair mends them from good copies"
                }
            ),
        )),
    }
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("reports serialize")
        );
        return;
    }
    for f in &report.findings {
        println!(
            "{}\t{}\t{}\t{}",
            f.verdict.as_str(),
            f.place,
            f.key,
            f.detail
        );
        if let Some(from) = &f.repaired_from {
            println!("REPAIRED\t{}\t{}\tfrom {from}", f.place, f.key);
        }
    }
    eprintln!(
        "audit: {} copies checked, {} ok, {} findings ({} repaired), {} left for a later run, {:.1} s",
        report.checked,
        report.ok,
        report.findings.len(),
        report.findings.iter().filter(|f| f.repaired).count(),
        report.not_checked,
        report.elapsed_secs
    );
}

/// Tell the fleet (and so rafty-notify) what the audit found; an unreachable broker is only a
/// warning, the audit's own result stands.
async fn announce(loaded: &Loaded, report: &Report) {
    let event = Event::AuditDone(wire::AuditDone {
        checked: report.checked,
        findings: report.findings.len() as u64,
        repaired: report.findings.iter().filter(|f| f.repaired).count() as u64,
        lines: report
            .findings
            .iter()
            .take(20)
            .map(|f| format!("{} {} {}: {}", f.verdict.as_str(), f.place, f.key, f.detail))
            .collect(),
        host: loaded.host(),
    });
    let sent = tokio::time::timeout(Duration::from_secs(10), async {
        let (conn, publisher, _) = open(loaded).await.map_err(|e| e.message)?;
        let r = publisher
            .publish_event(&event)
            .await
            .map_err(|e| e.to_string());
        close(&conn).await;
        r
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: the audit's event was not published: {e}"),
        Err(_) => eprintln!(
            "warning: the audit's event was not published: the broker did not answer in 10 s"
        ),
    }
}

/// `raftyctl restore-test`.
pub(crate) async fn restore_test(loaded: &Loaded, args: RestoreTestArgs) -> Result<(), Failure> {
    if let Some(n) = &args.place {
        known(loaded, n)?;
    }
    let places = places(loaded)?;
    let restored = audit::restore_test(&places, &ledger(loaded), args.place.as_deref())
        .await
        .map_err(|e| Failure::new(1, format!("restore test failed: {e}")))?;
    if args.json {
        println!("{}", serde_json::to_string(&restored).expect("serializes"));
    } else {
        println!(
            "restored {} from {}: {} bytes, sha256 {}, {} ({:.1} s)",
            restored.key,
            restored.place,
            restored.size,
            if restored.sha256_ok { "ok" } else { "WRONG" },
            if restored.played == "ok" {
                "plays".to_owned()
            } else {
                format!("does not play: {}", restored.played)
            },
            restored.secs
        );
    }
    if restored.sha256_ok && restored.played == "ok" {
        Ok(())
    } else {
        Err(Failure::new(
            1,
            format!(
                "{} from {} did not restore cleanly",
                restored.key, restored.place
            ),
        ))
    }
}
