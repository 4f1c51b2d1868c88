//! Hostile input at the front door (issue 6): bad jobs published to a real broker and consumed by one
//! real `transcoded` with the real HandBrakeCLI. docs/protocol.md promises that a message that is not a
//! usable job is a permanent failure: one attempt, then a dead letter with the reason, the body and
//! properties kept, and the worker goes on to the next delivery.
//!
//! Every case is checked and every deviation is collected before the test fails, so one run shows all
//! of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use rafty_core::job::{Origin, Source};
use rafty_core::names::{DEAD_QUEUE, JOB_TYPE, RETRY_QUEUE_PREFIX, RIP_EXCHANGE, WORK_QUEUE};
use rafty_core::{Job, Media};
use rafty_testkit::{Amqp, Env, Message, fixture_iso, shared_broker};
use serde_json::{Value, json};

/// Long enough for the two cases that run HandBrake, on a slow CI machine.
const WORKER_TIMEOUT: Duration = Duration::from_secs(180);
/// The header that ties a dead letter to its case, whatever its body and properties.
const CASE_HEADER: &str = "x-hostile-case";

/// One bad message and the words its dead letter's reason must contain.
struct Case {
    name: String,
    /// The `type` property (`None`: not set).
    kind: Option<String>,
    body: Vec<u8>,
    want: String,
    /// Extra string headers published with it.
    headers: Vec<(String, String)>,
}

fn case(name: &str, body: impl Into<Vec<u8>>, want: &str) -> Case {
    Case {
        name: name.to_owned(),
        kind: Some(JOB_TYPE.to_owned()),
        body: body.into(),
        want: want.to_owned(),
        headers: Vec::new(),
    }
}

/// A case made from a valid job changed by `edit`.
fn edited(base: &Value, name: &str, want: &str, edit: impl FnOnce(&mut Value)) -> Case {
    let mut job = base.clone();
    job["id"] = Value::from(uuid::Uuid::new_v4().to_string());
    edit(&mut job);
    case(name, job.to_string(), want)
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

/// The properties a third-party producer sets, plus the case's name in a header.
fn properties(c: &Case, n: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-rafty-attempt".into(), AMQPValue::LongLongInt(0));
    headers.insert(
        CASE_HEADER.into(),
        AMQPValue::LongString(LongString::from(c.name.as_str())),
    );
    for (k, v) in &c.headers {
        headers.insert(
            k.as_str().into(),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(format!("hostile-{n}").into())
        .with_app_id("hostile-test".into())
        .with_headers(headers);
    if let Some(kind) = &c.kind {
        props = props.with_type(kind.as_str().into());
    }
    props
}

fn setup(env: &Env) {
    let out = env.raftyctl(&["setup"]);
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn shorten(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_owned();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Publish every case, run one worker with `--max-jobs` = the number of cases, and return what
/// deviates from docs/protocol.md (empty when all is well).
fn run_cases(env: &Env, cases: &[Case], timeout: Duration) -> Vec<String> {
    let amqp = env.amqp();
    for (n, c) in cases.iter().enumerate() {
        amqp.publish(RIP_EXCHANGE, "rafty.rip.iso.dvd", &c.body, properties(c, n));
    }
    let max = cases.len().to_string();
    let mut worker = env.worker(&env.config(), &["--max-jobs", &max]);
    let started = Instant::now();
    let mut problems = Vec::new();
    while worker.running() && started.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = worker.log();
    if worker.running() {
        problems.push(format!(
            "transcoded did not settle {max} deliveries within {timeout:?} (still running); log tail:\n{}",
            tail(&log, 40)
        ));
    } else {
        let status = worker.wait(Duration::from_secs(1));
        if !status.success() {
            problems.push(format!(
                "transcoded exited with {status:?}, expected 0 after --max-jobs {max}; log tail:\n{}",
                tail(&log, 40)
            ));
        }
    }
    if log.contains("panicked") {
        problems.push(format!("transcoded panicked:\n{}", tail(&log, 40)));
    }
    drop(worker);

    // Read the dead letters and the queues on a connection of their own, in a thread: a message whose
    // headers exceed the frame size breaks the client's connection, and its calls never return.
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, n) = (env.url.clone(), cases.len());
    std::thread::spawn(move || {
        let _ = tx.send(collect(&url, n));
    });
    let (mut dead, left) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(found) => found,
        Err(_) => {
            problems.push(
                "reading the dead-letter queue hung (a dead letter larger than a frame?)"
                    .to_owned(),
            );
            return problems;
        }
    };
    for (q, ready) in left {
        if ready != 0 {
            problems.push(format!("{ready} message(s) left in {q}"));
        }
    }

    for c in cases {
        let Some(letters) = dead.remove(&c.name) else {
            problems.push(format!("{}: no dead letter", c.name));
            continue;
        };
        if letters.len() != 1 {
            problems.push(format!(
                "{}: {} dead letters, expected one",
                c.name,
                letters.len()
            ));
        }
        let d = &letters[0];
        let reason = d.header("x-rafty-error");
        let mut wrong = Vec::new();
        if d.header("x-rafty-attempt") != "0" {
            wrong.push(format!(
                "x-rafty-attempt {:?}, expected 0 (one attempt)",
                d.header("x-rafty-attempt")
            ));
        }
        if !d.header("x-first-death-reason").is_empty() {
            wrong.push(format!(
                "parked by the broker, not by the worker (x-first-death-reason {:?})",
                d.header("x-first-death-reason")
            ));
        }
        if d.header("x-rafty-error-class") != "permanent" {
            wrong.push(format!(
                "x-rafty-error-class {:?}, expected permanent",
                d.header("x-rafty-error-class")
            ));
        }
        if !reason.contains(&c.want) {
            wrong.push(format!("reason lacks {:?}", c.want));
        }
        if d.header("x-rafty-host").is_empty() || d.header("x-rafty-failed-at").is_empty() {
            wrong.push("x-rafty-host or x-rafty-failed-at missing".to_owned());
        }
        if d.header("x-rafty-original-routing-key") != "rafty.rip.iso.dvd" {
            wrong.push(format!(
                "x-rafty-original-routing-key {:?}",
                d.header("x-rafty-original-routing-key")
            ));
        }
        if d.body != c.body {
            wrong.push("the body was not kept as published".to_owned());
        }
        if !wrong.is_empty() {
            problems.push(format!(
                "{}: {} (reason: {:?})",
                c.name,
                wrong.join("; "),
                shorten(reason)
            ));
        }
    }
    for (name, letters) in dead {
        problems.push(format!(
            "{} unexpected dead letter(s) for {name:?}: {:?}",
            letters.len(),
            letters
                .iter()
                .map(|l| shorten(l.header("x-rafty-error")))
                .collect::<Vec<_>>()
        ));
    }
    if !env.media_files().is_empty() {
        problems.push(format!("files were made: {:?}", env.media_files()));
    }
    problems
}

/// Every dead letter (up to `n`, waiting up to 10 s for them) by case, and what is left in the work
/// queue and the retry rungs.
#[allow(clippy::type_complexity)]
fn collect(url: &str, n: usize) -> (BTreeMap<String, Vec<Message>>, Vec<(String, u32)>) {
    let amqp = Amqp::connect(url);
    let mut dead: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match amqp.get(DEAD_QUEUE) {
            Some(m) => dead
                .entry(m.header(CASE_HEADER).to_owned())
                .or_default()
                .push(m),
            None if dead.values().map(Vec::len).sum::<usize>() >= n
                || Instant::now() > deadline =>
            {
                break;
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut queues = vec![WORK_QUEUE.to_owned()];
    queues.extend(["1s", "2s"].map(|d| format!("{RETRY_QUEUE_PREFIX}.{d}")));
    let left = queues
        .into_iter()
        .map(|q| {
            let ready = amqp.counts(&q).0;
            (q, ready)
        })
        .collect();
    (dead, left)
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| shorten(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn report(problems: &[String], total: usize) {
    assert!(
        problems.is_empty(),
        "{} deviation(s) from docs/protocol.md over {total} bad jobs:\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

#[test]
fn bad_jobs_are_dead_lettered_once_with_a_reason_and_the_worker_goes_on() {
    let env = Env::new(shared_broker(), "hostile");
    setup(&env);
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "small.iso");
    // A real image outside the source root, and a symlink to it inside the root.
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret.iso");
    std::fs::copy(&iso, &secret).unwrap();
    std::os::unix::fs::symlink(&secret, env.iso_dir.join("link.iso")).unwrap();

    let ok = job_for(&iso, "ok");
    let iso_dir = env.iso_dir.display().to_string();
    let text = |edit: &dyn Fn(&mut Value)| {
        let mut job = ok.clone();
        job["id"] = Value::from(uuid::Uuid::new_v4().to_string());
        edit(&mut job);
        job.to_string()
    };
    // Raw bytes spliced into the text of a valid job (whose source is `<iso dir>/MARKER`) at `marker`.
    let splice = |marker: &str, bytes: &[u8]| {
        let body = text(&|j| j["source"]["path"] = Value::from(format!("{iso_dir}/MARKER")));
        let at = body
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {body}"));
        let mut raw = body.into_bytes();
        raw.splice(at..at + marker.len(), bytes.iter().copied());
        raw
    };
    let with_name = |name: &str| {
        let name = name.to_owned();
        move |j: &mut Value| j["output"]["name"] = Value::from(name.clone())
    };
    let with_path =
        |path: String| move |j: &mut Value| j["source"]["path"] = Value::from(path.clone());
    let with_titles = |titles: Value| move |j: &mut Value| j["encode"]["titles"] = titles.clone();
    let remove = |parent: Option<&'static str>, field: &'static str| {
        move |j: &mut Value| {
            let at = match parent {
                Some(p) => &mut j[p],
                None => j,
            };
            at.as_object_mut().unwrap().remove(field);
        }
    };

    let mut cases = vec![
        // Size and shape.
        edited(&ok, "huge body", "more than the 65536 accepted", |j| {
            j["origin"]["padding"] = Value::from("x".repeat(70 * 1024));
        }),
        edited(
            &ok,
            "deep nesting in titles",
            "recursion limit exceeded",
            |j| {
                let mut v = json!(1);
                for _ in 0..1000 {
                    v = json!([v]);
                }
                j["encode"]["titles"] = v;
            },
        ),
        case(
            "deep nesting, whole body",
            "[".repeat(60_000),
            "invalid type: sequence",
        ),
        case("empty body", "", "EOF while parsing"),
        case("body is null", "null", "invalid type: null"),
        case("body is a string", "\"job\"", "invalid type: string"),
        case(
            "not JSON",
            "this is not json",
            "not a valid rafty.job.v1 job",
        ),
        // Bytes that are not UTF-8.
        case(
            "non-UTF-8 bytes in the output name",
            splice("\"ok\"", b"\"\xff\xfe\""),
            "invalid unicode code point",
        ),
        case(
            "non-UTF-8 bytes in the source path",
            splice("MARKER", b"\xc3\x28.iso"),
            "invalid unicode code point",
        ),
        case(
            "lone surrogate in the source path",
            splice("MARKER", b"\\udc80.iso"),
            "surrogate",
        ),
        case(
            "UTF-16 body",
            {
                let mut raw = vec![0xfe, 0xff];
                for u in text(&|_| {}).encode_utf16() {
                    raw.extend_from_slice(&u.to_be_bytes());
                }
                raw
            },
            "not a valid rafty.job.v1 job",
        ),
        // The source path.
        edited(
            &ok,
            "NUL in the source path",
            "NUL",
            with_path(format!("{iso_dir}/small.iso\u{0}.txt")),
        ),
        edited(
            &ok,
            "symlink out of the source root",
            "outside the allowed source roots",
            with_path(format!("{iso_dir}/link.iso")),
        ),
        edited(
            &ok,
            ".. in the source path",
            "not a plain absolute path",
            with_path(format!("{iso_dir}/../outside/secret.iso")),
        ),
        edited(
            &ok,
            "source path outside the roots",
            "outside the allowed source roots",
            with_path("/etc/passwd".into()),
        ),
        edited(
            &ok,
            "relative source path",
            "must be an absolute path",
            with_path("small.iso".into()),
        ),
        // The output name.
        edited(
            &ok,
            "absolute output name",
            "path separator",
            with_name("/etc/cron.d/x"),
        ),
        edited(
            &ok,
            "output name with /",
            "path separator",
            with_name("sub/dir"),
        ),
        edited(
            &ok,
            "output name with \\",
            "path separator",
            with_name("sub\\dir"),
        ),
        edited(&ok, "output name ..", "contains \"..\"", with_name("..")),
        edited(&ok, "output name ...", "contains \"..\"", with_name("...")),
        edited(
            &ok,
            "output name .hidden",
            "starts with '.'",
            with_name(".hidden"),
        ),
        edited(
            &ok,
            "output name with BEL",
            "control characters",
            with_name("a\u{7}b"),
        ),
        edited(
            &ok,
            "output name with NUL",
            "control characters",
            with_name("a\u{0}b"),
        ),
        edited(
            &ok,
            "output name with DEL",
            "control characters",
            with_name("a\u{7f}"),
        ),
        edited(
            &ok,
            "output name with newline",
            "control characters",
            with_name("a\nb"),
        ),
        edited(&ok, "empty output name", "it is empty", with_name("")),
        edited(&ok, "blank output name", "it is empty", with_name(" \t ")),
        edited(
            &ok,
            "output name of 181 bytes",
            "longer than 180 bytes",
            with_name(&"x".repeat(181)),
        ),
        edited(
            &ok,
            "output name of 91 é",
            "longer than 180 bytes",
            with_name(&"é".repeat(91)),
        ),
        // Titles.
        edited(
            &ok,
            "negative title",
            "-1 is not a title number",
            with_titles(json!([1, -1])),
        ),
        edited(
            &ok,
            "title zero",
            "0 is not a title number",
            with_titles(json!([0])),
        ),
        edited(
            &ok,
            "title past u32",
            "4294967297 is not a title number",
            with_titles(json!([4_294_967_297u64])),
        ),
        case(
            "title past u64",
            text(&|j| j["encode"]["titles"] = json!(["BIG"]))
                .replace("[\"BIG\"]", "[18446744073709551616]"),
            "is not a title number",
        ),
        edited(
            &ok,
            "fractional title",
            "1.5 is not a title number",
            with_titles(json!([1.5])),
        ),
        edited(&ok, "empty title list", "is empty", with_titles(json!([]))),
        edited(
            &ok,
            "titles as a string",
            "expected \"main-feature\"",
            with_titles(json!("all")),
        ),
        edited(
            &ok,
            "titles as an object with extra keys",
            "an object must be",
            with_titles(json!({"min-duration-secs": 600, "x": 1})),
        ),
        edited(
            &ok,
            "negative minimum duration",
            "an object must be",
            with_titles(json!({"min-duration-secs": -5})),
        ),
        // Wrong JSON types and values.
        edited(&ok, "id as a number", "invalid type: integer `42`", |j| {
            j["id"] = json!(42)
        }),
        edited(&ok, "id not a UUID", "UUID parsing failed", |j| {
            j["id"] = json!("job-1")
        }),
        edited(&ok, "created_at not a date", "could not be parsed", |j| {
            j["created_at"] = json!("yesterday")
        }),
        edited(&ok, "unknown media", "unknown variant `hddvd`", |j| {
            j["source"]["media"] = json!("hddvd")
        }),
        edited(&ok, "media as a number", "media", |j| {
            j["source"]["media"] = json!(7)
        }),
        edited(&ok, "negative size", "invalid value: integer `-1`", |j| {
            j["source"]["size"] = json!(-1)
        }),
        edited(&ok, "source as a string", "invalid type: string", |j| {
            j["source"] = json!("/iso/small.iso")
        }),
        edited(&ok, "output as a string", "expected struct Output", |j| {
            j["output"] = json!("ok")
        }),
        edited(&ok, "output name null", "invalid type: null", |j| {
            j["output"]["name"] = Value::Null
        }),
        edited(
            &ok,
            "preset as a number",
            "invalid type: integer `5`",
            |j| j["encode"]["preset"] = json!(5),
        ),
        // Missing fields.
        edited(&ok, "missing id", "missing field `id`", remove(None, "id")),
        edited(
            &ok,
            "missing source",
            "missing field `source`",
            remove(None, "source"),
        ),
        edited(
            &ok,
            "missing media",
            "missing field `media`",
            remove(Some("source"), "media"),
        ),
        edited(
            &ok,
            "missing output name",
            "missing field `name`",
            remove(Some("output"), "name"),
        ),
        // Failures only HandBrake can see: the job is well formed, the disc says no.
        edited(&ok, "unknown preset", "No Such Preset 9000p", |j| {
            j["encode"]["preset"] = json!("No Such Preset 9000p")
        }),
        edited(
            &ok,
            "title not on the disc",
            "title 999 is not on",
            with_titles(json!([999])),
        ),
    ];
    // The message `type` property.
    let mut wrong_type = case(
        "wrong type property",
        text(&|_| {}),
        "message type is \"rafty.job.v9\"",
    );
    wrong_type.kind = Some("rafty.job.v9".into());
    let mut empty_type = case("empty type property", text(&|_| {}), "message type is \"\"");
    empty_type.kind = Some(String::new());
    let mut no_type = case("no type, not a job", "{}", "missing field `id`");
    no_type.kind = None;
    cases.extend([wrong_type, empty_type, no_type]);

    let problems = run_cases(&env, &cases, WORKER_TIMEOUT);
    report(&problems, cases.len());
}

/// A reason quotes what was wrong (the name, the value), and the reason travels in a header of the
/// dead letter, beside the headers the producer set. AMQP cannot split a content header frame, so the
/// dead letter must fit in the negotiated `frame_max` (128 KiB on RabbitMQ) whatever the job held;
/// otherwise the broker closes the connection, the job is redelivered, and the loop goes on until the
/// broker parks it after `delivery-limit` deliveries, without the reason.
#[test]
fn a_dead_letter_fits_in_a_frame_whatever_the_job_held() {
    let env = Env::new(shared_broker(), "hostile-frame");
    setup(&env);
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "small.iso");
    let ok = job_for(&iso, "ok");
    // DEL is legal raw in JSON and is escaped as `\u{7f}` (6 bytes) when the name is quoted.
    let dels = "\u{7f}".repeat(60_000);
    let mut near_frame = edited(&ok, "headers just under frame_max", "path separator", |j| {
        j["output"]["name"] = json!("a/b")
    });
    // The message as published fits in a frame (131072 bytes less the frame's own 8); the copy with
    // the x-rafty-* headers added does not, unless the worker makes room.
    near_frame
        .headers
        .push(("x-producer-padding".into(), "p".repeat(130_700)));
    let cases = vec![
        edited(
            &ok,
            "60000 DEL in the output name",
            "control characters",
            |j| j["output"]["name"] = Value::from(dels.clone()),
        ),
        edited(&ok, "60000 DEL as the size", "invalid type: string", |j| {
            j["source"]["size"] = Value::from(dels.clone())
        }),
        edited(
            &ok,
            "a 60000-byte output name",
            "longer than 180 bytes",
            |j| j["output"]["name"] = Value::from("x".repeat(60_000)),
        ),
        near_frame,
    ];
    let problems = run_cases(&env, &cases, Duration::from_secs(60));
    report(&problems, cases.len());
}
