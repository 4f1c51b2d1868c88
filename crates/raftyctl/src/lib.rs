//! `raftyctl`, Rafty's control tool: declare the topology, submit disc images, deliver rip's outbox.
//!
//! `main.rs` parses the command line into [`Cli`] and calls [`run`]; everything a command prints for
//! scripts goes to stdout, diagnostics to stderr.

pub mod deadletter;
pub mod status;
pub mod submit;
pub mod watch;

use std::time::Duration;

use clap::{Parser, Subcommand};
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{DEAD_QUEUE, EVENTS_EXCHANGE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_core::wire::ControlRequest;
use rafty_queue::{Publisher, Topology, connect, declare, ensure, mask_url};

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
    /// Jobs parked in rafty.transcode.dead: list, show, requeue after a fix, purge.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(deadletter::DeadLetterCommand),
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
        Command::DeadLetter(cmd) => deadletter::run(&loaded, cmd).await,
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

/// Connect to the broker of `loaded`, make sure of the topology (declared, or checked for a user
/// without configure rights) and open a confirming publisher.
pub(crate) async fn open(
    loaded: &Loaded,
) -> Result<(lapin::Connection, Publisher, String), Failure> {
    let (conn, url) = connect_to(loaded).await?;
    let timeout = loaded.config.broker.confirm_timeout;
    let publisher = Publisher::open(&conn, "raftyctl", timeout)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    ensure(&conn, &Topology::from_config(&loaded.config.transcode))
        .await
        .map_err(|e| Failure::new(exit::PROTOCOL, e.to_string()))?;
    Ok((conn, publisher, url))
}

async fn connect_to(loaded: &Loaded) -> Result<(lapin::Connection, String), Failure> {
    let url = loaded
        .amqp_url()
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))?;
    let conn = connect(&url, &format!("raftyctl@{}", loaded.host()))
        .await
        .map_err(|e| {
            Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "{e}\nIs RabbitMQ running there? Set [broker] url in {} or RAFTY_AMQP_URL.",
                    loaded.source_name()
                ),
            )
        })?;
    Ok((conn, mask_url(&url)))
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
        Ok::<_, lapin::Error>(declare(&channel, &topology).await)
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
    Ok(())
}
