//! A worker survives a broker restart: it reconnects with backoff and takes the next job, without
//! being restarted itself. This binary has its own broker because it stops it.

use std::time::Duration;

use rafty_testkit::{Broker, Env, fixture_iso};

#[test]
fn a_worker_reconnects_after_the_broker_restarts_and_takes_the_next_job() {
    let broker = Broker::start();
    let env = Env::new(&broker, "restart");
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "after restart.iso");
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    worker.wait_log("waiting for jobs", Duration::from_secs(30));

    broker.stop();
    worker.wait_log("reconnecting", Duration::from_secs(30));
    broker.restart();

    let id = env.submit(&iso, &[]);
    let status = worker.wait(Duration::from_secs(180));
    assert!(status.success(), "{}", worker.log());
    assert!(
        worker.log().contains(&format!("job_id={id}")),
        "{}",
        worker.log()
    );
    assert!(env.media_dir.join("after restart.mkv").exists());
}

#[test]
fn with_the_broker_down_rip_keeps_the_job_in_the_outbox_and_a_flush_delivers_it_once() {
    use rafty_core::names::WORK_QUEUE;
    use rafty_testkit::LoopDevice;

    let broker = Broker::start();
    let env = Env::new(&broker, "outbox");
    assert!(env.raftyctl(&["setup"]).status.success());
    let disc = LoopDevice::attach(&fixture_iso("SMALL", &[12]));
    broker.stop();

    let out = env.rip(&env.config(), &["--device", disc.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rip exits 0 with the job kept: {err}");
    assert!(err.contains("job kept in the outbox"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("outbox\t"), "{stdout}");
    let listed = env.raftyctl(&["outbox", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let id = listed.split('\t').next().unwrap().to_owned();
    assert_eq!(id.len(), 36, "one job waiting: {listed:?}");
    assert!(
        env.iso_dir.join("SMALL.iso").exists(),
        "the image itself is complete"
    );

    broker.restart();
    let flushed = env.raftyctl(&["outbox", "flush"]);
    assert!(
        flushed.status.success(),
        "{}",
        String::from_utf8_lossy(&flushed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&flushed.stdout).trim(), id);
    let again = env.raftyctl(&["outbox", "flush"]);
    assert!(
        again.status.success() && again.stdout.is_empty(),
        "nothing left to send"
    );

    let amqp = env.amqp();
    let msg = amqp.get(WORK_QUEUE).expect("delivered");
    assert_eq!(msg.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(msg.json()["source"]["label"], "SMALL");
    assert!(amqp.get(WORK_QUEUE).is_none(), "delivered once");
}
