//! An encode that outlives the broker's `consumer_timeout`.
//!
//! RabbitMQ closes the channel of a consumer that holds a delivery longer than `consumer_timeout` and
//! puts the delivery back in the queue. A worker that went on encoding would race whichever worker
//! gets the job next and could never ack its own copy. So the worker stops HandBrake as soon as the
//! broker takes the job back, deletes the partial, reconnects, and lets the queue's delivery limit end
//! a job that can never finish inside the timeout. This binary has its own node with a 2 s timeout,
//! checked every 500 ms (`channel_tick_interval`; the default checks once a minute).

use std::time::{Duration, Instant};

use rafty_core::names::{DEAD_QUEUE, WORK_QUEUE};
use rafty_testkit::{Broker, Env, fixture_iso, wait_for};

fn handbrake_children(worker_pid: u32) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &worker_pid.to_string(), "HandBrakeCLI"])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_job_held_past_consumer_timeout_is_stopped_cleaned_up_and_ends_as_a_dead_letter() {
    let broker = Broker::builder()
        .conf("consumer_timeout = 2000")
        .advanced("[{rabbit, [{channel_tick_interval, 500}]}].")
        .start();
    let env = Env::new(&broker, "timeout");
    let config = env.write_config("rafty.toml", None, &[("delivery-limit", "2")]);
    // About 7 s of encoding here: far past the 2 s timeout.
    let iso = env.add_iso(&fixture_iso("LONG", &[60]), "long film.iso");
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(&config, &[]);

    worker.wait_log("encoding", Duration::from_secs(60));
    let encoding = Instant::now();
    worker.wait_log("the broker took this job back", Duration::from_secs(30));
    let noticed = encoding.elapsed();
    let log = worker.log();
    assert!(
        log.contains("consumer_timeout"),
        "the log names the consumer timeout and what to do:\n{log}"
    );
    wait_for(
        "HandBrakeCLI to be stopped",
        Duration::from_secs(15),
        || (handbrake_children(worker.pid()) == 0).then_some(()),
    );

    // Each delivery is taken back in turn; past the delivery limit the broker dead-letters the job.
    let amqp = env.amqp();
    let dead = amqp.wait_get(DEAD_QUEUE, Duration::from_secs(90));
    assert_eq!(dead.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(dead.header("x-first-death-reason"), "delivery_limit");
    assert_eq!(
        amqp.counts(WORK_QUEUE).0,
        0,
        "nothing left in the work queue"
    );

    wait_for(
        "the worker to reconnect after the last take-back",
        Duration::from_secs(30),
        || {
            (worker.log().matches("connected; waiting for jobs").count() >= 3
                && handbrake_children(worker.pid()) == 0)
                .then_some(())
        },
    );
    assert!(worker.running(), "the worker is alive:\n{}", worker.log());
    let left: Vec<String> = env.media_files();
    assert!(
        left.is_empty(),
        "no output and no partial left behind: {left:?}"
    );
    let takebacks = worker
        .log()
        .matches("the broker took this job back")
        .count();
    assert!(
        takebacks >= 2,
        "taken back on each delivery:\n{}",
        worker.log()
    );
    println!(
        "consumer_timeout 2 s: encode stopped {:.1} s after it began; taken back {takebacks} times; \
         dead-lettered with reason delivery_limit",
        noticed.as_secs_f64()
    );
}

#[test]
fn the_shipped_rabbitmq_conf_is_accepted_and_raises_consumer_timeout_to_a_day() {
    let shipped = rafty_testkit::workspace_root().join("config/rabbitmq.conf");
    let text = std::fs::read_to_string(&shipped).expect("config/rabbitmq.conf");
    let broker = Broker::builder().conf(&text).start();
    let value = broker.ctl(&["eval", "application:get_env(rabbit, consumer_timeout)."]);
    assert_eq!(value.trim(), "{ok,86400000}", "{}", shipped.display());
}
