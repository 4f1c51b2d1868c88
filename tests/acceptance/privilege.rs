//! Least privilege: `scripts/broker-users` makes one broker user per role; each program works with its
//! own user's rights, and a worker's credentials can neither publish to `rafty.rip` nor read dead
//! letters; the replicator's user may declare only its own queues and exchange.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rafty_core::names::{DEAD_QUEUE, RIP_EXCHANGE, WORK_QUEUE};
use rafty_testkit::{Env, LoopDevice, fixture_iso, script, shared_broker};

/// The URL file of each role, written by the script for this test's vhost.
struct Users {
    dir: PathBuf,
}

impl Users {
    fn url(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("rafty-{role}.url")))
            .expect("a URL file per role")
            .trim()
            .to_owned()
    }
}

/// Run scripts/broker-users against this test binary's node for `env`'s vhost.
fn make_users(env: &Env) -> (Users, String) {
    let broker = shared_broker();
    // rabbitmqctl with the private node's variables, as $RABBITMQCTL for the script.
    let ctl = env.path().join("rabbitmqctl");
    std::fs::write(
        &ctl,
        format!(
            "#!/bin/sh\neval \"$('{}' env '{}' {})\"\nexec /usr/lib/rabbitmq/bin/rabbitmqctl \"$@\"\n",
            script("rafty-broker").display(),
            broker.dir().display(),
            broker.port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let vhost = env
        .url
        .rsplit_once('/')
        .and_then(|(_, v)| v.split('?').next())
        .expect("a vhost in the URL")
        .to_owned();
    let dir = env.path().join("credentials");
    let out = Command::new(script("broker-users"))
        .args(["--vhost", &vhost, "--prefix", &vhost, "--out"])
        .arg(&dir)
        .args(["--url-base", &format!("amqp://127.0.0.1:{}", broker.port())])
        .env("RABBITMQCTL", &ctl)
        .output()
        .expect("run scripts/broker-users");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (Users { dir }, stdout)
}

/// A config for `role`'s user.
fn config_for(env: &mut Env, users: &Users, role: &str, file: &str) -> PathBuf {
    let saved = std::mem::replace(&mut env.url, users.url(role));
    let path = env.write_config(file, None, &[]);
    env.url = saved;
    path
}

/// What the broker says when `url`'s user tries `what`; `Ok` when it is allowed.
fn attempt(url: &str, what: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let result = match what {
            "publish to rafty.rip" => {
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                async {
                    ch.basic_publish(
                        RIP_EXCHANGE.into(),
                        "rafty.rip.iso.dvd".into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        BasicProperties::default(),
                    )
                    .await?
                    .await?;
                    Ok::<_, lapin::Error>(())
                }
                .await
                .map_err(|e| e.to_string())
            }
            "read dead letters" | "read the work queue" => {
                let queue = if what == "read dead letters" {
                    DEAD_QUEUE
                } else {
                    WORK_QUEUE
                };
                ch.basic_consume(
                    queue.into(),
                    "probe".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            "declare a destination's queue" => rafty_replicate::replicator::declare(&conn, "usb")
                .await
                .map_err(|e| e.to_string()),
            "declare a queue" => ch
                .queue_declare(
                    "rafty.something-else".into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => panic!("no such attempt: {other}"),
        };
        let _ = conn.close(200, "probe done".into()).await;
        result
    })
}

fn refused(url: &str, what: &str) {
    match attempt(url, what) {
        Ok(()) => panic!("{what} was allowed for {}", rafty_queue::mask_url(url)),
        Err(e) => assert!(e.contains("ACCESS_REFUSED"), "{what}: {e}"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn each_role_gets_only_its_rights_and_a_worker_cannot_publish_rip_jobs_or_read_dead_letters() {
    let env = Env::new(shared_broker(), "users-refused");
    let (users, stdout) = make_users(&env);
    for role in ["rip", "worker", "notify", "replicate", "admin"] {
        let file = users.dir.join(format!("rafty-{role}.url"));
        assert_eq!(mode(&file), 0o600, "{} is private", file.display());
        let password = users.url(role);
        let password = password
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .expect("user:password in the URL")
            .1
            .to_owned();
        assert!(password.len() >= 32, "a long random password");
        assert!(
            !stdout.contains(&password),
            "the script never prints a password"
        );
    }
    // The admin declares the topology; the others may only use it.
    assert_eq!(attempt(&users.url("admin"), "declare a queue"), Ok(()));
    let mut admin_env = env;
    admin_env.url = users.url("admin");
    admin_env.write_config("rafty.toml", None, &[]);
    let setup = admin_env.raftyctl(&["setup"]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    let worker = users.url("worker");
    refused(&worker, "publish to rafty.rip");
    refused(&worker, "read dead letters");
    refused(&worker, "declare a queue");
    assert_eq!(attempt(&worker, "read the work queue"), Ok(()));

    let rip = users.url("rip");
    assert_eq!(attempt(&rip, "publish to rafty.rip"), Ok(()));
    refused(&rip, "read the work queue");
    refused(&rip, "read dead letters");

    let notify = users.url("notify");
    refused(&notify, "publish to rafty.rip");
    refused(&notify, "read dead letters");

    // What rafty-replicate declares when it connects: its queue, bound to the rip and events
    // exchanges, and the request exchange of `raftyctl replicate reconcile`.
    let replicate = users.url("replicate");
    assert_eq!(attempt(&replicate, "declare a destination's queue"), Ok(()));
    refused(&replicate, "declare a queue");
    refused(&replicate, "publish to rafty.rip");
    refused(&replicate, "read dead letters");
}

#[test]
fn rip_a_worker_and_raftyctl_do_their_jobs_with_their_own_users() {
    let mut env = Env::new(shared_broker(), "users-work");
    let (users, _) = make_users(&env);
    let worker_config = config_for(&mut env, &users, "worker", "worker.toml");
    let rip_config = config_for(&mut env, &users, "rip", "rip.toml");

    // Setup needs the admin; a worker's user is told so.
    let denied = env.raftyctl_with(&worker_config, &["setup"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success());
    assert!(
        err.contains("ACCESS_REFUSED") && err.contains("admin user"),
        "{err}"
    );
    env.url = users.url("admin");
    env.write_config("rafty.toml", None, &[]);
    let setup = env.raftyctl(&["setup"]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    // rip publishes with the rip user.
    let disc = LoopDevice::attach(&fixture_iso("SMALL", &[12]));
    let ripped = env.rip(&rip_config, &["--device", disc.path().to_str().unwrap()]);
    assert!(
        ripped.status.success(),
        "{}",
        String::from_utf8_lossy(&ripped.stderr)
    );
    // A worker with the worker user encodes it, publishes its events and acks.
    let mut worker = env.worker(&worker_config, &["--max-jobs", "1"]);
    let status = worker.wait(Duration::from_secs(180));
    assert!(status.success(), "{}", worker.log());
    assert_eq!(
        env.media_files()
            .iter()
            .filter(|f| f.ends_with(".mkv"))
            .count(),
        1,
        "{:?}",
        env.media_files()
    );
    let log = worker.log();
    let password = users.url("worker");
    let password = password
        .split('@')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert!(
        !log.contains(password),
        "the password never reaches the log"
    );
    // And raftyctl status works for the admin.
    let status = env.raftyctl(&["status", "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}
