//! Helpers for chaos tests: a seeded random number generator, an event queue that survives broker
//! restarts, `rip` started in the background, and a look for processes a test left running.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use rafty_core::names::EVENTS_EXCHANGE;

use crate::bin;

/// A small deterministic random number generator (xorshift64*): the same seed gives the same
/// schedule, so a chaos run that failed can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A seed from `RAFTY_CHAOS_SEED` when set, else from the clock and the process id.
    pub fn seed_from_env() -> u64 {
        if let Some(seed) = std::env::var("RAFTY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return seed;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        nanos ^ (u64::from(std::process::id()) << 32)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// Declare a durable quorum queue `queue` bound to the worker events exchange with each of `keys`
/// (e.g. `rafty.transcode.done`). Unlike [`crate::Amqp::tap`] (an exclusive queue, gone with its
/// connection), it keeps every event the broker confirmed across a broker restart; read it with
/// [`crate::Amqp::get`].
pub fn durable_event_queue(url: &str, queue: &str, keys: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the events exchange");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
        for key in keys {
            ch.queue_bind(
                queue.into(),
                EVENTS_EXCHANGE.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {queue} to {key}: {e}"));
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

/// Start `rip --config CONFIG ARGS...` in the background (what [`crate::Env::rip`] runs, without
/// waiting), its stderr to `log`.
pub fn spawn_rip(config: &Path, args: &[&str], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("create the rip log");
    Command::new(bin("rip"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RAFTY_AMQP_URL")
        .env_remove("RAFTY_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start rip")
}

/// Processes whose command line contains every one of `parts`: (pid, command line with spaces for
/// NULs). The calling process is left out.
pub fn processes_with(parts: &[&str]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            parts
                .iter()
                .all(|p| line.contains(p))
                .then(|| (pid, line.trim().to_owned()))
        })
        .collect()
}
