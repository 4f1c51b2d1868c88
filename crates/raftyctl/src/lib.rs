//! `raftyctl`, Rafty's control tool: declare the topology, submit disc images, deliver rip's outbox.
//!
//! `main.rs` parses the command line into [`Cli`] and calls [`run`]; everything a command prints for
//! scripts goes to stdout, diagnostics to stderr.

pub mod dashboard;
pub mod deadletter;
pub mod members;
pub mod replicate;
pub mod status;
pub mod submit;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{DEAD_QUEUE, EVENTS_EXCHANGE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_core::wire::ControlRequest;
use rafty_queue::{Broker, Publisher, Topology, declare};

pub use submit::SubmitArgs;

/// Rafty's control tool.
///
/// Exit status: 0 success, 1 failure, 65 bad input (nothing was submitted), 69 broker unreachable,
/// 76 the broker refused or returned a job, 78 configuration error.
#[derive(Debug, Parser)]
#[command(name = "raftyctl", version, about, long_about)]
pub struct Cli {
    /// The flags every program takes.
    #[command(flatten)]
    pub common: rafty_program::CommonArgs,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare every exchange and queue (idempotent); nothing else.
    Setup,
    /// Queue depths and consumers, and what every live worker is doing (asked over rafty.control).
    Status {
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Live progress of every rip and encode: bars on a terminal, one line per event otherwise.
    Watch,
    /// Workers on HOST finish their current job and take no new one until `resume` (`*`: every host).
    Drain {
        /// Host name, as `raftyctl status` shows it
        host: String,
    },
    /// Workers on HOST take jobs again after a `drain` (`*`: every host).
    Resume {
        /// Host name, as `raftyctl status` shows it
        host: String,
    },
    /// Queue disc images for transcoding; prints one job id per image.
    Submit(SubmitArgs),
    /// Jobs that rip could not publish while the broker was away ([rip] spool-dir/outbox).
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// A live web page of the fleet: drives, queues, jobs in flight, workers, history, dead
    /// letters (docs/dashboard.md).
    ///
    /// Serves the page on --listen and keeps it live with server-sent events. Read-only unless
    /// --allow-actions: then the page's buttons (requeue a dead letter, drain or resume a worker)
    /// send the token of --token-file in the X-Rafty-Token header. The history (the newest
    /// 10 000 jobs) is kept in --state-dir, fed by the durable queue rafty.dashboard.history.
    Dashboard(dashboard::DashboardArgs),
    /// Jobs parked in rafty.transcode.dead: list, show, requeue after a fix, purge.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(deadletter::DeadLetterCommand),
    /// The copies of the library at each destination (rafty-replicate): status, enable, disable,
    /// reconcile.
    #[command(subcommand)]
    Replicate(replicate::ReplicateCommand),
    /// Re-read copies (the library's and every destination's) against the ledger's SHA-256; exit
    /// 0 nothing found (or everything mended), 1 findings remain, 2 the audit failed.
    ///
    /// Prints one line per finding: VERDICT<TAB>PLACE<TAB>KEY<TAB>DETAIL, verdicts MISSING,
    /// CORRUPT, UNREADABLE, UNPLAYABLE, STALE; with --repair, REPAIRED<TAB>PLACE<TAB>KEY<TAB>from
    /// OTHER after each mended one.
    Audit(replicate::AuditArgs),
    /// Bring back one random object from a random destination, check its SHA-256 and play it.
    #[command(name = "restore-test")]
    RestoreTest(replicate::RestoreTestArgs),
}

/// `raftyctl outbox` commands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List the jobs waiting: "JOB-ID<TAB>ROUTING-KEY<TAB>IMAGE".
    List,
    /// Publish every waiting job (confirmed) and remove it from the outbox; prints the ids sent.
    Flush,
}

/// A failure with the exit code that tells scripts what kind it was.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Exit code (see `--help`).
    pub code: u8,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli, loaded: Loaded) -> Result<(), Failure> {
    match cli.command {
        Command::Setup => setup(&loaded).await,
        Command::Status { json } => status::run(&loaded, json).await,
        Command::Watch => watch::run(&loaded).await,
        Command::Drain { host } => status::steer(&loaded, &ControlRequest::Drain { host }).await,
        Command::Resume { host } => status::steer(&loaded, &ControlRequest::Resume { host }).await,
        Command::Submit(args) => submit::submit(&loaded, args).await,
        Command::Outbox(cmd) => outbox(&loaded, cmd).await,
        Command::Dashboard(args) => dashboard::run(&loaded, args).await,
        Command::DeadLetter(cmd) => deadletter::run(&loaded, cmd).await,
        Command::Replicate(cmd) => replicate::run(&loaded, cmd).await,
        Command::Audit(args) => replicate::audit(&loaded, args).await,
        Command::RestoreTest(args) => replicate::restore_test(&loaded, args).await,
    }
}

async fn outbox(loaded: &Loaded, cmd: OutboxCommand) -> Result<(), Failure> {
    let outbox = rafty_queue::Outbox::new(loaded.config.rip.spool_dir.join("outbox"));
    match cmd {
        OutboxCommand::List => {
            let pending = outbox
                .pending()
                .map_err(|e| Failure::new(1, format!("{}: {e}", outbox.dir().display())))?;
            for (_, entry) in pending {
                println!(
                    "{}\t{}\t{}",
                    entry.job.id,
                    entry.routing_key,
                    entry.job.source.path.display()
                );
            }
            Ok(())
        }
        OutboxCommand::Flush => {
            let (conn, publisher, url) = open(loaded).await?;
            let result = outbox.flush(&publisher).await;
            close(&conn).await;
            match result {
                Ok(flushed) => {
                    for id in &flushed.sent {
                        println!("{id}");
                    }
                    eprintln!(
                        "raftyctl: {} delivered to {url}, {} waiting",
                        flushed.sent.len(),
                        flushed.left
                    );
                    Ok(())
                }
                Err(e) => Err(Failure::new(exit::UNAVAILABLE, e.to_string())),
            }
        }
    }
}

/// Connect to the broker of `loaded` (the first node of its `[broker] urls` that works), make sure
/// of the topology (declared, or checked for a user without configure rights) and open a confirming
/// publisher that fails over to another node when a publish loses its node.
pub(crate) async fn open(
    loaded: &Loaded,
) -> Result<(Arc<lapin::Connection>, Publisher, String), Failure> {
    let broker = broker(loaded)?;
    let timeout = loaded.config.broker.confirm_timeout;
    let topology = Topology::from_config(&loaded.config.transcode);
    let name = format!("raftyctl@{}", loaded.host());
    let (publisher, conn) =
        Publisher::connect(&broker, &name, "raftyctl", timeout, Some(&topology))
            .await
            .map_err(|e| unreachable(loaded, e))?;
    Ok((conn, publisher, broker.current()))
}

/// The connector to the broker's nodes of `loaded`.
pub(crate) fn broker(loaded: &Loaded) -> Result<Broker, Failure> {
    let urls = loaded
        .amqp_urls()
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    Broker::new(urls).map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
}

fn unreachable(loaded: &Loaded, e: rafty_queue::Error) -> Failure {
    match e {
        e @ rafty_queue::Error::Declare { .. } => Failure::new(exit::PROTOCOL, e.to_string()),
        e => Failure::new(
            exit::UNAVAILABLE,
            format!(
                "{e}\nIs RabbitMQ running there? Set [broker] url (or urls) in {} or RAFTY_AMQP_URL.",
                loaded.source_name()
            ),
        ),
    }
}

async fn connect_to(loaded: &Loaded) -> Result<(Arc<lapin::Connection>, String), Failure> {
    let broker = broker(loaded)?;
    let conn = broker
        .connect(&format!("raftyctl@{}", loaded.host()))
        .await
        .map_err(|e| unreachable(loaded, e))?;
    Ok((conn, broker.current()))
}

/// Print each queue's members from `[broker] management-url` when set (a note when it is not and the
/// broker is a cluster); returns them for `--json`.
pub(crate) async fn show_members(
    loaded: &Loaded,
    url: &str,
    names: &[String],
) -> Result<Option<members::Members>, Failure> {
    let members = fetch_members(loaded, url, names).await?;
    match &members {
        Some(m) => {
            println!();
            members::print(m);
        }
        None if loaded.amqp_urls().is_ok_and(|u| u.len() > 1) => println!(
            "\nqueue members: not shown; set [broker] management-url to the management API (docs/cluster.md)"
        ),
        None => {}
    }
    Ok(members)
}

/// Each queue's members from `[broker] management-url`, when set.
pub(crate) async fn fetch_members(
    loaded: &Loaded,
    url: &str,
    names: &[String],
) -> Result<Option<members::Members>, Failure> {
    let Some(api) = loaded.config.broker.management_url.clone() else {
        return Ok(None);
    };
    let vhost = members::vhost_of(url);
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || members::fetch(&api, &vhost, &names))
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?
        .map(Some)
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e))
}

pub(crate) async fn close(conn: &lapin::Connection) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        conn.close(200, "raftyctl done".into()),
    )
    .await;
}

async fn setup(loaded: &Loaded) -> Result<(), Failure> {
    let (conn, url) = connect_to(loaded).await?;
    let topology = Topology::from_config(&loaded.config.transcode);
    let declared = async {
        let channel = conn.create_channel().await?;
        let declared = declare(&channel, &topology).await;
        // Closed before the connection: a channel still open when the connection closes makes
        // lapin log a "Connection error" although nothing failed. A refused declaration has
        // closed it already.
        let _ = channel.close(200, "raftyctl done".into()).await;
        Ok::<_, lapin::Error>(declared)
    }
    .await
    .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    close(&conn).await;
    declared.map_err(|e| {
        let mut message = e.to_string();
        if message.contains("ACCESS_REFUSED") {
            message.push_str(
                "\nsetup needs a user that may configure this vhost: use the admin user's URL \
                 (scripts/broker-users makes rafty-admin)",
            );
        }
        Failure::new(exit::PROTOCOL, message)
    })?;
    let rungs: Vec<String> = (0..topology.retry_delays.len() as u32)
        .filter_map(|i| topology.retry_queue_for(i))
        .collect();
    println!("topology declared on {url}");
    println!(
        "  exchanges: {RIP_EXCHANGE} (topic), {EVENTS_EXCHANGE} (topic), {DEAD_QUEUE} (fanout)"
    );
    println!(
        "  queues:    {WORK_QUEUE} (delivery limit {}), {}, {DEAD_QUEUE}",
        topology.delivery_limit,
        rungs.join(", ")
    );
    let mut names = vec![WORK_QUEUE.to_owned()];
    names.extend(rungs);
    names.push(DEAD_QUEUE.to_owned());
    show_members(loaded, &url, &names).await?;
    Ok(())
}
