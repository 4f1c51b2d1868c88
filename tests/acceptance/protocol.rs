//! The client examples in docs/protocol.md work: a job published from Python (pika) and one from the
//! shell (amqp-publish) are each transcoded by a real worker. JSON names and headers are the contract.

use std::process::Command;
use std::time::Duration;

use rafty_testkit::{Env, fixture_iso, shared_broker, workspace_root};

fn run_example(env: &Env, cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 36, "the example prints the job id: {id:?}");
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(
        worker.wait(Duration::from_secs(180)).success(),
        "{}",
        worker.log()
    );
    assert!(
        worker.log().contains(&format!("job_id={id}")),
        "{}",
        worker.log()
    );
    id
}

#[test]
fn a_job_from_python_pika_is_transcoded() {
    let env = Env::new(shared_broker(), "pika");
    assert!(env.raftyctl(&["setup"]).status.success());
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "From Python.iso");
    run_example(
        &env,
        Command::new("/usr/bin/python3")
            .arg(workspace_root().join("docs/examples/publish_job.py"))
            .arg(&env.url)
            .arg(&iso),
    );
    assert!(
        env.media_dir.join("From Python.mkv").exists(),
        "{:?}",
        env.media_files()
    );
}

#[test]
fn a_job_from_the_shell_is_transcoded() {
    let env = Env::new(shared_broker(), "shell");
    assert!(env.raftyctl(&["setup"]).status.success());
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "from-shell.iso");
    run_example(
        &env,
        Command::new("sh")
            .arg(workspace_root().join("docs/examples/publish-job.sh"))
            // librabbitmq's URL parser takes no query string.
            .arg(env.url.split('?').next().unwrap())
            .arg(&iso)
            .arg("From Shell"),
    );
    assert!(
        env.media_dir.join("From Shell.mkv").exists(),
        "{:?}",
        env.media_files()
    );
}
