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
