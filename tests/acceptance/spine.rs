//! The spine, end to end: `raftyctl submit` → RabbitMQ → `transcoded` → HandBrakeCLI → a verified video,
//! and every way a job can fail. Real broker (a private node for this test binary, a vhost per test),
//! real HandBrakeCLI, real DVD-Video ISOs built by the test kit.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rafty_core::job::{Origin, Source};
use rafty_core::names::{DEAD_QUEUE, JOB_TYPE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_core::{Job, Media};
use rafty_testkit::{
    Amqp, Env, bin, fixture_iso, garbage_iso, job_properties, shared_broker, wait_for,
};
use serde_json::Value;

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

fn env(test: &str) -> Env {
    Env::new(shared_broker(), test)
}

/// The duration of a video as ffprobe reads it: a check independent of HandBrake's own scan.
fn probe_secs(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a duration")
}

/// Publish a job the way a third-party client would.
fn publish_job(amqp: &Amqp, job: &Value) {
    let id = job["id"].as_str().expect("id");
    amqp.publish(
        RIP_EXCHANGE,
        "rafty.rip.iso.dvd",
        job.to_string().as_bytes(),
        job_properties(id, JOB_TYPE),
    );
}

fn job_for(path: &Path, name: &str) -> Value {
    let job = Job::new(
        Source {
            path: path.to_path_buf(),
            media: Media::Dvd,
            size: None,
            sha256: None,
            label: None,
            unreadable_sectors: None,
            url: None,
        },
        name.to_owned(),
        Origin::default(),
    );
    serde_json::to_value(&job).unwrap()
}

fn setup(env: &Env) {
    let out = env.raftyctl(&["setup"]);
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_submitted_two_title_iso_becomes_one_verified_video_of_the_main_title() {
    let env = env("happy");
    let iso = env.add_iso(
        &fixture_iso("FEATURE_DISC", &[20, 12]),
        "Feature Disc é.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let id = env.submit(&iso, &[]);
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "submit prints the job id, got {id:?}"
    );

    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let done = amqp.wait_event(&tap, "done", Duration::from_secs(10), |v| {
        v["id"] == id.as_str()
    });
    let out = env.media_dir.join("Feature Disc é.mkv");
    assert_eq!(done["outputs"][0]["path"], out.to_str().unwrap());
    let secs = probe_secs(&out);
    assert!(
        (secs - 20.0).abs() < 1.5,
        "the main (20 s) title, not the 12 s one: {secs} s"
    );

    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(env.media_dir.join("Feature Disc é.mkv.rafty.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["job-id"], id.as_str());
    assert_eq!(sidecar["title"], 1);
    assert_eq!(sidecar["source-label"], "FEATURE_DISC");
    assert_eq!(
        sidecar["output-size"],
        std::fs::metadata(&out).unwrap().len()
    );
    assert_eq!(
        env.media_files(),
        ["Feature Disc é.mkv", "Feature Disc é.mkv.rafty.json"],
        "no temporary file left"
    );

    assert_eq!(amqp.counts(WORK_QUEUE).0, 0, "work queue empty");
    assert_eq!(amqp.counts(DEAD_QUEUE).0, 0, "nothing dead-lettered");
    let log = worker.log();
    assert!(
        log.contains(&format!("job_id={id}")) && log.contains("redelivered=false"),
        "job span in the log:\n{log}"
    );
}

#[test]
fn garbage_iso_is_dead_lettered_after_one_attempt_and_the_worker_goes_on() {
    let env = env("garbage");
    let garbage = env.add_iso(&garbage_iso(), "garbage.iso");

    let refused = env.raftyctl(&["submit", garbage.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("garbage.iso") && stderr.contains("not a disc image"),
        "{stderr}"
    );

    let bad = env.submit(&garbage, &["--media", "dvd"]);
    let good_iso = env.add_iso(&fixture_iso("SMALL", &[12]), "small.iso");
    let good = env.submit(&good_iso, &[]);

    let amqp = env.amqp();
    let mut worker = env.worker(&env.config(), &["--max-jobs", "2"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let dead = amqp.wait_get(DEAD_QUEUE, Duration::from_secs(10));
    assert_eq!(dead.message_id.as_deref(), Some(bad.as_str()));
    assert_eq!(dead.header("x-rafty-attempt"), "0", "one attempt only");
    assert_eq!(dead.header("x-rafty-error-class"), "permanent");
    assert!(
        dead.header("x-rafty-error").contains("No title found"),
        "{:?}",
        dead.headers
    );
    assert!(!dead.header("x-rafty-host").is_empty());
    assert_eq!(
        dead.header("x-rafty-original-routing-key"),
        "rafty.rip.iso.dvd"
    );
    assert!(
        amqp.get(DEAD_QUEUE).is_none(),
        "only the garbage job is dead"
    );
    assert!(
        env.media_dir.join("small.mkv").exists(),
        "the next job ({good}) was done"
    );
}

#[test]
fn unusable_messages_are_dead_lettered_with_a_clear_reason() {
    let env = env("badmsg");
    setup(&env);
    let amqp = env.amqp();
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "small.iso");
    let ok = job_for(&iso, "ok");
    let mut cases: Vec<(String, Vec<u8>, &'static str, &'static str)> = Vec::new();
    let mut case = |mut job: Value, kind: &'static str, body: Option<&[u8]>, want: &'static str| {
        let id = uuid::Uuid::new_v4().to_string();
        job["id"] = Value::from(id.clone());
        let body = body
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| job.to_string().into_bytes());
        cases.push((
            id,
            body,
            if kind.is_empty() { JOB_TYPE } else { kind },
            want,
        ));
    };
    case(
        ok.clone(),
        "",
        Some(b"this is not json"),
        "not a valid rafty.job.v1 job",
    );
    case(
        ok.clone(),
        "rafty.job.v9",
        None,
        "message type is \"rafty.job.v9\"",
    );
    let mut j = ok.clone();
    j["output"]["name"] = "../escape".into();
    case(j, "", None, "output name \"../escape\"");
    let mut j = ok.clone();
    j["output"]["name"] = "sub/dir".into();
    case(j, "", None, "path separator");
    let mut j = ok.clone();
    j["source"]["path"] = "/etc/hostname".into();
    case(j, "", None, "outside the allowed source roots");
    let mut j = ok.clone();
    j.as_object_mut().unwrap().remove("output");
    case(j, "", None, "missing field `output`");
    let mut j = ok.clone();
    j["encode"] = serde_json::json!({"titles": [0]});
    case(j, "", None, "not a title number");

    for (id, body, kind, _) in &cases {
        amqp.publish(
            RIP_EXCHANGE,
            "rafty.rip.iso.dvd",
            body,
            job_properties(id, kind),
        );
    }
    let mut worker = env.worker(&env.config(), &["--max-jobs", &cases.len().to_string()]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    for _ in 0..cases.len() {
        let dead = amqp.wait_get(DEAD_QUEUE, Duration::from_secs(10));
        let id = dead.message_id.clone().unwrap();
        let (_, _, _, want) = cases
            .iter()
            .find(|c| c.0 == id)
            .expect("a dead letter of ours");
        assert_eq!(dead.header("x-rafty-error-class"), "permanent", "{id}");
        assert_eq!(dead.header("x-rafty-attempt"), "0");
        assert!(
            dead.header("x-rafty-error").contains(want),
            "{:?} lacks {want:?}",
            dead.header("x-rafty-error")
        );
    }
    assert!(
        env.media_files().is_empty(),
        "nothing was encoded: {:?}",
        env.media_files()
    );
}

#[test]
fn a_missing_source_climbs_the_retry_ladder_then_is_dead_lettered() {
    let env = env("ladder");
    setup(&env);
    let amqp = env.amqp();
    let tap = amqp.tap();
    let job = job_for(&env.iso_dir.join("not yet copied.iso"), "late");
    publish_job(&amqp, &job);

    // Attempt 0 → rung 1s, attempt 1 → rung 2s, attempt 2 → no rung left → dead letter.
    let mut worker = env.worker(&env.config(), &["--max-jobs", "3"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let dead = amqp.wait_get(DEAD_QUEUE, Duration::from_secs(10));
    assert_eq!(dead.message_id.as_deref(), job["id"].as_str());
    assert_eq!(dead.header("x-rafty-attempt"), "2");
    assert_eq!(dead.header("x-rafty-error-class"), "retryable");
    let reason = dead.header("x-rafty-error");
    assert!(
        reason.contains("not yet copied.iso") && reason.contains("gave up after 3 attempts"),
        "{reason}"
    );

    let events = amqp.drain_events(&tap);
    let nexts: Vec<&str> = events
        .iter()
        .filter(|(k, _)| k == "rafty.transcode.failed")
        .map(|(_, v)| v["next"].as_str().unwrap())
        .collect();
    assert_eq!(
        nexts,
        [
            "rafty.transcode.retry.1s",
            "rafty.transcode.retry.2s",
            "dead-letter"
        ]
    );
    assert_eq!(amqp.counts(WORK_QUEUE).0, 0);
}

#[test]
fn an_unwritable_output_directory_is_retried_not_dead_lettered() {
    let env = env("readonly");
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "small.iso");
    std::fs::create_dir_all(&env.media_dir).unwrap();
    let id = env.submit(&iso, &[]);
    let amqp = env.amqp();
    let tap = amqp.tap();

    // The worker sees the media directory as a read-only bind mount (root ignores permissions).
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@""#,
    ])
    .arg(&env.media_dir)
    .arg(bin("transcoded"));
    let mut worker = env.worker_with(cmd, &env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(10), |v| {
        v["id"] == id.as_str()
    });
    assert_eq!(failed["error-kind"], "output-unwritable", "{failed}");
    assert_eq!(failed["next"], "rafty.transcode.retry.1s");
    assert_eq!(amqp.counts(DEAD_QUEUE).0, 0, "not dead-lettered");
    // The rung's TTL brings it back to the work queue, and a worker that can write finishes it.
    wait_for(
        "the job back in the work queue",
        Duration::from_secs(20),
        || (amqp.counts(WORK_QUEUE).0 == 1).then_some(()),
    );
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(10), |v| {
        v["id"] == id.as_str()
    });
    assert_eq!(done["attempt"], 1);
    assert_eq!(env.media_files(), ["small.mkv", "small.mkv.rafty.json"]);
}

#[test]
fn sigterm_mid_encode_leaves_no_partial_and_another_worker_completes_the_job_once() {
    let env = env("sigterm");
    let iso = env.add_iso(&fixture_iso("LONG", &[120]), "long.iso");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let quick = env.write_config(
        "quick-drain.toml",
        Some("first"),
        &[("drain-timeout", "\"1s\"")],
    );
    let id = env.submit(&iso, &[]);

    let mut first = env.worker(&quick, &[]);
    amqp.wait_event(&tap, "progress", JOB_TIMEOUT, |v| v["id"] == id.as_str());
    first.signal(Signal::SIGTERM);
    let status = first.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "clean exit after SIGTERM: {status:?}\n{}",
        first.log()
    );
    assert!(
        first.log().contains("Requeued"),
        "the job was handed back:\n{}",
        first.log()
    );
    assert!(
        env.media_files().is_empty(),
        "no partial file left: {:?}",
        env.media_files()
    );
    assert_eq!(amqp.counts(WORK_QUEUE).0, 1, "the job is back on the queue");

    let mut second = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(second.wait(JOB_TIMEOUT).success(), "{}", second.log());
    assert!(
        second.log().contains("redelivered=true"),
        "{}",
        second.log()
    );
    let secs = probe_secs(&env.media_dir.join("long.mkv"));
    assert!((secs - 120.0).abs() < 2.0, "complete output: {secs} s");
    let events = amqp.drain_events(&tap);
    let dones = events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.done" && v["id"] == id.as_str())
        .count();
    assert_eq!(dones, 1, "completed once");
    assert_eq!(env.media_files(), ["long.mkv", "long.mkv.rafty.json"]);
}

#[test]
fn sigterm_lets_the_current_encode_finish_within_the_drain_limit() {
    let env = env("drain");
    let iso = env.add_iso(&fixture_iso("FEATURE_DISC", &[20, 12]), "drained.iso");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(&env.config(), &[]);
    amqp.wait_event(&tap, "started", JOB_TIMEOUT, |v| v["id"] == id.as_str());
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    amqp.wait_event(&tap, "done", Duration::from_secs(10), |v| {
        v["id"] == id.as_str()
    });
    assert_eq!(env.media_files(), ["drained.mkv", "drained.mkv.rafty.json"]);
    assert_eq!(amqp.counts(WORK_QUEUE).0, 0);
}

#[test]
fn a_redelivered_finished_job_is_acked_without_a_second_encode() {
    let env = env("redeliver");
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "again.iso");
    let out = env.raftyctl(&["submit", "--json", iso.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("submit --json prints the job");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    let video = env.media_dir.join("again.mkv");
    let before = std::fs::metadata(&video).unwrap().modified().unwrap();

    // The same message again, as the broker would redeliver it after a crash between rename and ack.
    publish_job(&amqp, &job);
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(10), |v| {
        v["skipped"] == true
    });
    assert_eq!(done["id"], job["id"]);
    assert!(
        worker.log().contains("not encoding again"),
        "{}",
        worker.log()
    );
    assert!(
        !worker.log().contains("encoding title="),
        "no encode ran:\n{}",
        worker.log()
    );
    assert_eq!(
        std::fs::metadata(&video).unwrap().modified().unwrap(),
        before,
        "the video was not rewritten"
    );
    assert_eq!(amqp.counts(WORK_QUEUE).0, 0);
}

#[test]
fn two_workers_share_four_jobs() {
    let env = env("share");
    setup(&env);
    let amqp = env.amqp();
    let tap = amqp.tap();
    let a = env.write_config("a.toml", Some("worker-a"), &[]);
    let b = env.write_config("b.toml", Some("worker-b"), &[]);
    let mut wa = env.worker(&a, &[]);
    let mut wb = env.worker(&b, &[]);
    wait_for("two consumers", Duration::from_secs(30), || {
        (amqp.counts(WORK_QUEUE).1 == 2).then_some(())
    });

    let fixture = fixture_iso("SMALL", &[12]);
    let ids: Vec<String> = (1..=4)
        .map(|i| env.submit(&env.add_iso(&fixture, &format!("episode {i}.iso")), &[]))
        .collect();
    let mut hosts = Vec::new();
    for id in &ids {
        let done = amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == id.as_str());
        hosts.push(done["host"].as_str().unwrap().to_owned());
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts, ["worker-a", "worker-b"], "both workers took work");
    wa.signal(Signal::SIGTERM);
    wb.signal(Signal::SIGTERM);
    assert!(wa.wait(Duration::from_secs(30)).success());
    assert!(wb.wait(Duration::from_secs(30)).success());
    assert_eq!(
        env.media_files().len(),
        8,
        "four videos and four sidecars: {:?}",
        env.media_files()
    );
}

#[test]
fn a_data_disc_is_returned_by_the_broker_and_submit_says_so() {
    let env = env("data");
    let content = env.path().join("data-disc");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("notes.txt"), "not a video").unwrap();
    let iso = env.iso_dir.join("backup.iso");
    let status = Command::new("genisoimage")
        .args(["-quiet", "-V", "BACKUP", "-o"])
        .arg(&iso)
        .arg(&content)
        .status()
        .unwrap();
    assert!(status.success());

    let out = env.raftyctl(&["submit", iso.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "no VIDEO_TS: the media must be given"
    );
    let out = env.raftyctl(&["submit", "--media", "data", iso.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{err}");
    assert!(
        err.contains("backup.iso") && err.contains("returned") && err.contains("--media dvd"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no job id printed for a job nobody takes"
    );
}

#[test]
fn dead_letters_are_listed_shown_requeued_after_a_fix_and_purged() {
    let env = env("deadletter");
    let cfg = env.write_config("no-ladder.toml", None, &[("retry-delays", "[]")]);
    let ctl = |args: &[&str]| {
        let out = env.raftyctl_with(&cfg, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(ctl(&["setup"]).0, Some(0));
    let amqp = env.amqp();
    let late_path = env.iso_dir.join("late arrival.iso");
    let late = job_for(&late_path, "late");
    let mut bad = job_for(&late_path, "bad");
    bad["output"]["name"] = "../escape".into();
    publish_job(&amqp, &late);
    publish_job(&amqp, &bad);
    let mut worker = env.worker(&cfg, &["--max-jobs", "2"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let (code, list, err) = ctl(&["dead-letter", "list"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    let late_id = late["id"].as_str().unwrap();
    let late_line = lines
        .iter()
        .find(|l| l.starts_with(late_id))
        .expect("the late job is listed");
    assert!(
        late_line.contains("source unavailable") && late_line.contains("retryable"),
        "{late_line}"
    );
    assert!(list.contains("output name \"../escape\""), "{list}");

    let (code, shown, _) = ctl(&["dead-letter", "show", late_id]);
    assert_eq!(code, Some(0));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["job"]["source"]["path"], late_path.to_str().unwrap());
    assert_eq!(shown["routing-key"], "rafty.rip.iso.dvd");
    assert_eq!(ctl(&["dead-letter", "show", "no-such-id"]).0, Some(65));
    // Not parked (after the second look that covers another client's browse): nothing requeued.
    let (code, out, err) = ctl(&["dead-letter", "requeue", "no-such-id"]);
    assert_eq!((code, out.as_str()), (Some(65), ""), "{err}");
    assert!(err.contains("not in rafty.transcode.dead"), "{err}");

    // Fix the cause, send it back: it completes, starting again at attempt 0.
    std::fs::copy(fixture_iso("SMALL", &[12]), &late_path).unwrap();
    let tap = amqp.tap();
    let (code, requeued, err) = ctl(&["dead-letter", "requeue", late_id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(requeued.trim(), late_id);
    assert_eq!(
        ctl(&["dead-letter", "list"]).1.lines().count(),
        1,
        "the other one is still parked"
    );
    let mut worker = env.worker(&cfg, &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    let done = amqp.wait_event(&tap, "done", Duration::from_secs(10), |v| {
        v["id"] == late_id
    });
    assert_eq!(done["attempt"], 0);
    assert!(env.media_dir.join("late.mkv").exists());

    let mut purge = Command::new(bin("raftyctl"))
        .args(["dead-letter", "purge"])
        .env("RAFTY_CONFIG", &cfg)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    purge.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = purge.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "declined: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(amqp.counts(DEAD_QUEUE).0, 1);
    assert_eq!(ctl(&["dead-letter", "purge", "--yes"]).0, Some(0));
    assert_eq!(amqp.counts(DEAD_QUEUE).0, 0);
}

#[test]
fn status_shows_waiting_jobs_and_what_each_worker_is_doing() {
    let env = env("status");
    let fixture = fixture_iso("LONG", &[120]);
    let ids: Vec<String> = (1..=3)
        .map(|i| env.submit(&env.add_iso(&fixture, &format!("long {i}.iso")), &[]))
        .collect();
    let status = || -> Value {
        let out = env.raftyctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints one object")
    };
    let s = status();
    assert_eq!(s["queues"][0]["name"], WORK_QUEUE);
    assert_eq!(s["queues"][0]["messages"], 3, "{s}");
    assert_eq!(s["queues"][0]["consumers"], 0);
    assert_eq!(s["workers"], serde_json::json!([]), "no worker runs");
    let names: Vec<&str> = s["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            WORK_QUEUE,
            "rafty.transcode.retry.1s",
            "rafty.transcode.retry.2s",
            DEAD_QUEUE
        ]
    );

    let amqp = env.amqp();
    let tap = amqp.tap();
    let quick_stop = [("drain-timeout", "\"1s\"")];
    let mut a = env.worker(
        &env.write_config("a.toml", Some("worker-a"), &quick_stop),
        &[],
    );
    let mut b = env.worker(
        &env.write_config("b.toml", Some("worker-b"), &quick_stop),
        &[],
    );
    let first = amqp.wait_event(&tap, "started", JOB_TIMEOUT, |_| true);
    amqp.wait_event(&tap, "started", JOB_TIMEOUT, |v| v["id"] != first["id"]);

    let s = status();
    let workers = s["workers"].as_array().unwrap();
    let hosts: Vec<&str> = workers
        .iter()
        .map(|w| w["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["worker-a", "worker-b"], "{s}");
    for w in workers {
        assert_eq!(w["state"], "working", "{w}\n{}\n{}", a.log(), b.log());
        assert!(ids.iter().any(|id| w["job"]["id"] == id.as_str()), "{w}");
        assert_eq!(w["job"]["title"], 1);
    }
    assert_ne!(workers[0]["job"]["id"], workers[1]["job"]["id"]);
    assert_eq!(s["queues"][0]["consumers"], 2);
    assert_eq!(s["queues"][0]["messages"], 1, "one job still waits");
    let text = env.raftyctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("WORKERS (2)") && text.contains("worker-a") && text.contains("long "),
        "{text}"
    );

    a.signal(Signal::SIGTERM);
    b.signal(Signal::SIGTERM);
    assert!(a.wait(Duration::from_secs(60)).success(), "{}", a.log());
    assert!(b.wait(Duration::from_secs(60)).success(), "{}", b.log());
}

#[test]
fn drain_stops_a_worker_taking_new_jobs_while_its_current_one_completes_and_resume_restarts_it() {
    let env = env("drain-host");
    let cfg = env.write_config("w.toml", Some("drainee"), &[("drain-timeout", "\"1s\"")]);
    let ctl = |args: &[&str]| {
        let out = env.raftyctl_with(&cfg, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fixture = fixture_iso("FEATURE_DISC", &[20, 12]);
    let first = env.submit(&env.add_iso(&fixture, "first.iso"), &[]);
    let second = env.submit(&env.add_iso(&fixture, "second.iso"), &[]);
    let amqp = env.amqp();
    let tap = amqp.tap();
    let mut worker = env.worker(&cfg, &[]);
    amqp.wait_event(&tap, "started", JOB_TIMEOUT, |v| v["id"] == first.as_str());

    let said = ctl(&["drain", "drainee"]);
    assert!(
        said.contains("drainee") && said.contains("draining"),
        "{said}"
    );
    amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == first.as_str());
    let s: Value = serde_json::from_str(&ctl(&["status", "--json"])).unwrap();
    let w = &s["workers"][0];
    assert_eq!(w["state"], "drained", "{s}");
    assert_eq!(s["queues"][0]["messages"], 1, "the second job waits: {s}");
    assert_eq!(s["queues"][0]["consumers"], 0, "{s}");
    std::thread::sleep(Duration::from_secs(2));
    let events = amqp.drain_events(&tap);
    assert!(
        !events
            .iter()
            .any(|(k, v)| k == "rafty.transcode.started" && v["id"] == second.as_str()),
        "a drained worker took a job"
    );
    assert!(worker.running());

    let said = ctl(&["resume", "drainee"]);
    assert!(said.contains("drainee"), "{said}");
    amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == second.as_str());
    let other = env.raftyctl_with(&cfg, &["drain", "nobody-here"]);
    assert_eq!(
        other.status.code(),
        Some(1),
        "no worker answers for an unknown host"
    );
    worker.signal(Signal::SIGTERM);
    assert!(
        worker.wait(Duration::from_secs(30)).success(),
        "{}",
        worker.log()
    );
}

#[test]
fn watch_prints_progress_lines_of_a_real_encode_ending_at_100_percent() {
    let env = env("watch");
    setup(&env);
    let mut watch = Command::new(bin("raftyctl"))
        .arg("watch")
        .env("RAFTY_CONFIG", env.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says so on stderr once its queue is bound.
    let mut err = std::io::BufReader::new(watch.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    assert!(first.contains("watching"), "{first}");

    let id = env.submit(
        &env.add_iso(&fixture_iso("LONG", &[120]), "Watched.iso"),
        &[],
    );
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    std::thread::sleep(Duration::from_millis(500));
    watch.interrupt();
    let out = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let progress: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(&id[..8]) && l.contains(" fps"))
        .collect();
    assert!(
        !progress.is_empty(),
        "progress lines while encoding:\n{out}"
    );
    let last = lines.last().expect("some output");
    assert!(
        last.contains("Watched") && last.contains("100.0 %") && last.contains("done"),
        "ends at 100 %:\n{out}"
    );
}

trait Interrupt {
    fn interrupt(&mut self);
}

impl Interrupt for std::process::Child {
    /// SIGINT, as Ctrl-C would: watch closes its connection and exits.
    fn interrupt(&mut self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.id() as i32), Signal::SIGINT)
            .unwrap();
    }
}

#[test]
fn a_custom_preset_file_is_used_and_an_unknown_preset_is_dead_lettered_with_the_list() {
    let env = env("presets");
    let fixture = fixture_iso("SMALL", &[12]);
    // A preset of our own, exported by HandBrakeCLI itself: 320x240, low quality.
    let preset_file = env.path().join("tiny.json");
    let exported = Command::new("HandBrakeCLI")
        .args(["--preset-export", "Rafty Tiny", "--preset-export-file"])
        .arg(&preset_file)
        .args([
            "-Z",
            "Very Fast 480p30",
            "-w",
            "320",
            "-l",
            "240",
            "-q",
            "40",
            "-t",
            "1",
            "-i",
        ])
        .arg(&fixture)
        .arg("-o")
        .arg(env.path().join("export-probe.mkv"))
        .output()
        .unwrap();
    assert!(
        exported.status.success() && preset_file.exists(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let cfg = env.write_config(
        "presets.toml",
        None,
        &[("preset-files", &format!("[\"{}\"]", preset_file.display()))],
    );
    let ctl = |args: &[&str]| {
        let out = env.raftyctl_with(&cfg, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split('\t')
            .next()
            .unwrap()
            .to_owned()
    };
    let tiny = env.add_iso(&fixture, "tiny.iso");
    ctl(&["submit", "--preset", "Rafty Tiny", tiny.to_str().unwrap()]);
    let nope = ctl(&[
        "submit",
        "--preset",
        "No Such Preset",
        "--name",
        "nope",
        tiny.to_str().unwrap(),
    ]);
    let mut worker = env.worker(&cfg, &["--max-jobs", "2"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());

    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(env.media_dir.join("tiny.mkv"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "320,240",
        "the custom preset's size"
    );

    let dead = env.amqp().wait_get(DEAD_QUEUE, Duration::from_secs(10));
    assert_eq!(dead.message_id.as_deref(), Some(nope.as_str()));
    assert_eq!(dead.header("x-rafty-attempt"), "0");
    let reason = dead.header("x-rafty-error");
    assert!(
        reason.contains("\"No Such Preset\"")
            && reason.contains("Very Fast 480p30")
            && reason.contains("Rafty Tiny"),
        "{reason}"
    );
}

#[test]
fn a_series_disc_is_split_into_title_jobs_that_two_workers_share_and_disc_done_lists_them() {
    let env = env("fanout");
    setup(&env);
    // Three episodes (14, 13, 12 s), a 5 s decoy, and a copy of the first episode's layout.
    let iso = env.add_iso(
        &fixture_iso("SERIES_DISC", &[14, 13, 12, 5, 14]),
        "Series Disc.iso",
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let a = env.write_config("a.toml", Some("worker-a"), &[]);
    let b = env.write_config("b.toml", Some("worker-b"), &[]);
    let mut wa = env.worker(&a, &[]);
    let mut wb = env.worker(&b, &[]);
    wait_for("two consumers", Duration::from_secs(30), || {
        (amqp.counts(WORK_QUEUE).1 == 2).then_some(())
    });
    let disc = env.submit(&iso, &["--titles", "min=10"]);

    let split = amqp.wait_event(&tap, "split", JOB_TIMEOUT, |v| v["id"] == disc.as_str());
    assert_eq!(
        split["titles"],
        serde_json::json!([1, 2, 3]),
        "decoy (4) and duplicate (5) dropped: {split}"
    );
    let done = amqp.wait_event(&tap, "disc.done", JOB_TIMEOUT, |v| {
        v["disc"] == disc.as_str()
    });
    let outputs: Vec<&str> = done["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(outputs.len(), 3, "{done}");
    for (t, secs) in [(1, 14.0), (2, 13.0), (3, 12.0)] {
        let path = env.media_dir.join(format!("Series Disc - t{t:02}.mkv"));
        assert!(outputs.contains(&path.to_str().unwrap()), "{outputs:?}");
        let got = probe_secs(&path);
        assert!((got - secs).abs() < 1.5, "title {t}: {got} s");
    }
    let events = amqp.drain_events(&tap);
    let mut hosts: Vec<&str> = events
        .iter()
        .filter(|(k, v)| k == "rafty.transcode.done" && v["disc"] == disc.as_str())
        .map(|(_, v)| v["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts.len(), 3, "one done per title");
    hosts.sort();
    hosts.dedup();
    assert_eq!(
        hosts,
        ["worker-a", "worker-b"],
        "both workers encoded titles"
    );
    assert!(
        !events
            .iter()
            .any(|(k, v)| k == "rafty.transcode.done" && v["id"] == disc.as_str()),
        "the disc job itself is split, not done"
    );
    wa.signal(Signal::SIGTERM);
    wb.signal(Signal::SIGTERM);
    assert!(wa.wait(Duration::from_secs(30)).success());
    assert!(wb.wait(Duration::from_secs(30)).success());
    assert_eq!(env.media_files().len(), 6, "{:?}", env.media_files());
}

/// A stand-in for HandBrakeCLI that answers the worker's start-up questions and the scan like the real
/// one, then starts an encode and stops making progress. The real HandBrakeCLI cannot be made to hang
/// on demand, and the stall watchdog is what this exercises.
fn hanging_handbrake(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("HandBrakeCLI");
    std::fs::write(
        &script,
        r#"#!/bin/sh
case " $* " in
  *" --version "*) echo "HandBrake 1.6.1"; exit 0 ;;
  *" -z "*) printf 'General/\n    Very Fast 480p30\n' >&2; exit 0 ;;
  *" --scan "*)
    echo 'JSON Title Set: {"MainFeature": -1, "TitleList": [{"Index": 1, "Duration": {"Ticks": 1800000}, "AudioList": [{}]}]}'
    exit 0 ;;
esac
printf 'Encoding: task 1 of 1, 10.00 %%\r'
echo "[00:00:01] decoding..." >&2
exec sleep 600
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn a_stalled_encode_is_stopped_cleaned_up_and_retried() {
    let env = env("stall");
    let fake = hanging_handbrake(env.path());
    let cfg = env.write_config(
        "stall.toml",
        None,
        &[
            ("handbrake", &format!("\"{}\"", fake.display())),
            ("stall-timeout", "\"2s\""),
        ],
    );
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "stuck.iso");
    let amqp = env.amqp();
    let tap = amqp.tap();
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(&cfg, &["--max-jobs", "1"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    let failed = amqp.wait_event(&tap, "failed", Duration::from_secs(10), |v| {
        v["id"] == id.as_str()
    });
    assert_eq!(failed["error-kind"], "stalled", "{failed}");
    assert_eq!(failed["next"], "rafty.transcode.retry.1s");
    assert!(
        env.media_files().is_empty(),
        "no partial left: {:?}",
        env.media_files()
    );
}

#[test]
fn wanted_audio_languages_are_kept_and_a_disc_without_them_is_not_left_silent() {
    let env = env("tracks");
    let cfg = env.write_config(
        "tracks.toml",
        None,
        &[
            ("audio-languages", "[\"und\"]"),
            ("subtitle-languages", "[\"eng\"]"),
        ],
    );
    let other = env.write_config("other.toml", None, &[("audio-languages", "[\"fra\"]")]);
    let fixture = fixture_iso("SMALL", &[12]);
    let kept = env.add_iso(&fixture, "kept.iso");
    let fallback = env.add_iso(&fixture, "fallback.iso");
    for (cfg, iso) in [(&cfg, &kept), (&other, &fallback)] {
        let out = env.raftyctl_with(cfg, &["submit", iso.to_str().unwrap()]);
        assert!(out.status.success());
        let mut worker = env.worker(cfg, &["--max-jobs", "1"]);
        assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    }
    for name in ["kept.mkv", "fallback.mkv"] {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "a",
                "-show_entries",
                "stream=codec_type",
                "-of",
                "csv=p=0",
            ])
            .arg(env.media_dir.join(name))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "audio",
            "{name} has its sound"
        );
    }
}

#[test]
fn outputs_land_where_media_servers_expect_them() {
    let env = env("layout");
    let cfg = env.write_config(
        "layout.toml",
        None,
        &[
            ("movie-name", "\"Movies/{name}/{name}\""),
            ("title-name", "\"Shows/{name}/{name} - s01e{index}\""),
        ],
    );
    let ctl = |args: &[&str]| {
        let out = env.raftyctl_with(&cfg, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let movie = env.add_iso(&fixture_iso("FEATURE_DISC", &[20, 12]), "THE_BIG_MOVIE.iso");
    let show = env.add_iso(
        &fixture_iso("SERIES_DISC", &[14, 13, 12, 5, 14]),
        "SOME_SHOW_S1.iso",
    );
    ctl(&["submit", movie.to_str().unwrap()]);
    ctl(&["submit", "--titles", "min=10", show.to_str().unwrap()]);
    // The movie, the split, and three titles.
    let mut worker = env.worker(&cfg, &["--max-jobs", "5"]);
    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    for path in [
        "Movies/The Big Movie/The Big Movie.mkv",
        "Shows/Some Show S1/Some Show S1 - s01e01.mkv",
        "Shows/Some Show S1/Some Show S1 - s01e02.mkv",
        "Shows/Some Show S1/Some Show S1 - s01e03.mkv",
    ] {
        let file = env.media_dir.join(path);
        assert!(
            file.exists() && output_sidecar(&file).exists(),
            "{path} missing: {:?}",
            env.media_files()
        );
    }
    assert!(
        (probe_secs(&env.media_dir.join("Movies/The Big Movie/The Big Movie.mkv")) - 20.0).abs()
            < 1.5
    );
}

fn output_sidecar(video: &Path) -> std::path::PathBuf {
    let mut s = video.as_os_str().to_owned();
    s.push(".rafty.json");
    s.into()
}

#[test]
fn a_worker_killed_between_title_jobs_leaves_the_rest_to_the_other_and_disc_done_still_comes() {
    let env = env("killed");
    setup(&env);
    let amqp = env.amqp();
    let tap = amqp.tap();
    let iso = env.add_iso(
        &fixture_iso("SERIES_DISC", &[14, 13, 12, 5, 14]),
        "Killed Series.iso",
    );
    let a = env.write_config("a.toml", Some("doomed"), &[]);
    let b = env.write_config("b.toml", Some("survivor"), &[]);
    let mut doomed = env.worker(&a, &[]);
    doomed.wait_log("waiting for jobs", Duration::from_secs(30));
    let disc = env.submit(&iso, &["--titles", "min=10"]);
    // The doomed worker splits the disc and encodes a first title; then it dies without a word.
    amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| {
        v["disc"] == disc.as_str() && v["host"] == "doomed"
    });
    doomed.signal(Signal::SIGKILL);
    doomed.wait(Duration::from_secs(10));
    let mut survivor = env.worker(&b, &[]);
    let done = amqp.wait_event(&tap, "disc.done", JOB_TIMEOUT, |v| {
        v["disc"] == disc.as_str()
    });
    assert_eq!(done["outputs"].as_array().unwrap().len(), 3, "{done}");
    for t in 1..=3 {
        assert!(
            env.media_dir
                .join(format!("Killed Series - t{t:02}.mkv"))
                .exists(),
            "{:?}",
            env.media_files()
        );
    }
    survivor.signal(Signal::SIGTERM);
    assert!(
        survivor.wait(Duration::from_secs(30)).success(),
        "{}",
        survivor.log()
    );
}
