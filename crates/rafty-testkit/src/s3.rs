//! A real S3-compatible server on loopback for the replication tests and benchmarks: PyPI's
//! `moto[server]` (`moto_server -H 127.0.0.1 -p PORT`), one process, buckets created on demand, and
//! a small client (curl with SigV4) for the tests to look at, damage and remove objects with.
//!
//! Why moto: Debian 12 ships no S3 server (no minio, garage or seaweedfs). moto installs from PyPI
//! in seconds into a virtualenv (`scripts/install-deps` makes it), speaks the S3 REST API that
//! `object_store` uses (path-style requests, multipart uploads, ListObjectsV2), and keeps objects
//! in memory, which suits small fixtures. The other candidate, the `s3s-fs` crate's server, would
//! add a multi-minute `cargo install` (its own hyper/aws-sdk tree) to every fresh CI machine.
//!
//! The server is found at `RAFTY_MOTO_SERVER` (a `moto_server` executable), else
//! `$RAFTY_MOTO_VENV/bin/moto_server`, else `~/.local/share/rafty-test/moto/bin/moto_server` (where
//! install-deps puts it). A missing server is a test failure naming `scripts/install-deps`, never a
//! skip. The process is killed when the [`S3Server`] is dropped, and by a reaper when the test
//! process exits (a server kept in a `static` is never dropped).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The access key id the tests' destinations use (moto accepts any).
pub const S3_ACCESS_KEY_ID: &str = "rafty-test";
/// The secret access key the tests' destinations use (moto accepts any).
pub const S3_SECRET_ACCESS_KEY: &str = "rafty-test-secret";
/// The region the tests' destinations use.
pub const S3_REGION: &str = "us-east-1";

/// How long moto may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `moto_server` on 127.0.0.1; killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

static SHARED: OnceLock<S3Server> = OnceLock::new();

/// The server shared by the tests of this binary (started on first use, stopped when the binary
/// exits).
pub fn shared_s3() -> &'static S3Server {
    SHARED.get_or_init(S3Server::start)
}

/// Where `moto_server` is expected; see the module documentation.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RAFTY_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("RAFTY_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/rafty-test/moto")
        });
    venv.join("bin/moto_server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port for the S3 server")
}

impl S3Server {
    /// Start `moto_server` on a free loopback port and wait until it answers; panics with the fix
    /// when it is not installed or does not start.
    pub fn start() -> S3Server {
        let program = moto_server_path();
        assert!(
            program.is_file(),
            "the S3 test server {} is missing (PyPI's moto[server] in a virtualenv): run \
             `scripts/install-deps` (or set RAFTY_MOTO_SERVER to a moto_server executable)",
            program.display()
        );
        assert!(
            on_path("curl"),
            "curl is missing: run `scripts/install-deps` (apt-get install curl)"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("rafty-s3-")
            .tempdir()
            .expect("temp dir");
        let mut last_log = String::new();
        // A port found free may be taken before moto binds it: try a few.
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("create moto's log"))
                .stderr(std::fs::File::create(log.with_extension("err")).expect("moto's stderr"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            let mut server = S3Server { child, port, dir };
            server.reap_on_exit();
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = server.child.try_wait() {
                    last_log = format!("exited with {status}: {}", server.log());
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && server
                        .curl(&["-o", "/dev/null", "-w", "%{http_code}"], "/")
                        .0
                        != "000"
                {
                    return server;
                }
                if start.elapsed() > READY_TIMEOUT {
                    panic!(
                        "moto_server did not answer on 127.0.0.1:{port} within {READY_TIMEOUT:?}: {}",
                        server.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Take the directory back from the failed server (its Drop kills nothing alive).
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("temp dir"));
        }
        panic!("moto_server did not start: {last_log}");
    }

    /// The endpoint a destination names (`endpoint = "http://127.0.0.1:PORT"`, `allow-http`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged (its request log, errors included).
    pub fn log(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            out.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
        out
    }

    /// Create a bucket (`PUT /bucket`); panics unless the server made it.
    pub fn create_bucket(&self, bucket: &str) {
        let (code, body) = self.curl(
            &["-X", "PUT", "-o", "-", "-w", "\n%{http_code}"],
            &format!("/{}", encode(bucket)),
        );
        assert_eq!(code, "200", "creating bucket {bucket}: {body}");
    }

    /// The object `key` of `bucket`, or None when there is none.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.dir.path().join(format!("get-{}", uuid_ish()));
        let (code, _) = self.curl(
            &[
                "-o",
                out.to_str().expect("utf-8 temp path"),
                "-w",
                "%{http_code}",
            ],
            &object_url(bucket, key),
        );
        let body = std::fs::read(&out).ok();
        let _ = std::fs::remove_file(&out);
        match code.as_str() {
            "200" => Some(body.unwrap_or_default()),
            "404" => None,
            other => panic!(
                "GET {bucket}/{key}: HTTP {other}: {}",
                String::from_utf8_lossy(&body.unwrap_or_default())
            ),
        }
    }

    /// Put `data` at `key` of `bucket`, replacing what is there (a test damaging a copy).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let file = self.dir.path().join(format!("put-{}", uuid_ish()));
        std::fs::write(&file, data).expect("write the object to send");
        let (code, body) = self.curl(
            &[
                "-T",
                file.to_str().expect("utf-8 temp path"),
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ],
            &object_url(bucket, key),
        );
        let _ = std::fs::remove_file(&file);
        assert_eq!(code, "200", "PUT {bucket}/{key}: {body}");
    }

    /// Remove `key` from `bucket`.
    pub fn delete(&self, bucket: &str, key: &str) {
        let (code, body) = self.curl(
            &["-X", "DELETE", "-o", "-", "-w", "\n%{http_code}"],
            &object_url(bucket, key),
        );
        assert!(
            code == "204" || code == "200",
            "DELETE {bucket}/{key}: {body}"
        );
    }

    /// Every object of `bucket` whose key starts with `prefix`: (key, size), in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let (code, body) = self.curl(
            &["-o", "-", "-w", "\n%{http_code}"],
            &format!(
                "/{}?list-type=2&max-keys=1000&prefix={}",
                encode(bucket),
                encode_all(prefix)
            ),
        );
        assert_eq!(code, "200", "listing {bucket}/{prefix}: {body}");
        assert!(
            !body.contains("<IsTruncated>true</IsTruncated>"),
            "more than 1000 objects under {bucket}/{prefix}: the test kit does not page"
        );
        body.split("<Contents>")
            .skip(1)
            .map(|c| {
                let key = between(c, "<Key>", "</Key>").expect("a Key in Contents");
                let size = between(c, "<Size>", "</Size>")
                    .and_then(|s| s.parse().ok())
                    .expect("a Size in Contents");
                (unescape_xml(key), size)
            })
            .collect()
    }

    /// curl with SigV4 against `path` (which starts with `/`): (the last line of its output,
    /// which the `-w` formats put the HTTP status on, and everything before it).
    fn curl(&self, args: &[&str], path: &str) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--aws-sigv4"])
            .arg(format!("aws:amz:{S3_REGION}:s3"))
            .arg("-u")
            .arg(format!("{S3_ACCESS_KEY_ID}:{S3_SECRET_ACCESS_KEY}"))
            .args(args)
            .arg(format!("{}{path}", self.endpoint()))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().to_owned(), body.to_owned())
    }

    /// A process outside the test's process group kills the server when this process ends.
    fn reap_on_exit(&self) {
        // Only if that pid is still this server (a pid can be reused once the server is gone).
        let reaper = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             tr '\\0' ' ' < /proc/{moto}/cmdline 2>/dev/null | grep -q 'moto_server -H 127.0.0.1 -p {port} ' \
             && kill {moto}",
            me = std::process::id(),
            moto = self.child.id(),
            port = self.port,
        );
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &reaper])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the S3 server's reaper");
        assert!(status.success(), "setsid failed: {status}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
        .unwrap_or(false)
}

fn uuid_ish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn object_url(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode(bucket), encode(key))
}

/// Percent-encode every byte but the unreserved ones and `/`.
fn encode(s: &str) -> String {
    encode_with(s, b"/")
}

/// Percent-encode every byte but the unreserved ones (a query value).
fn encode_all(s: &str) -> String {
    encode_with(s, b"")
}

fn encode_with(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_the_url_and_decoded_from_the_listing() {
        assert_eq!(
            encode("media/Amélie – Director's Cut.mkv"),
            "media/Am%C3%A9lie%20%E2%80%93%20Director%27s%20Cut.mkv"
        );
        assert_eq!(encode_all("a/b c"), "a%2Fb%20c");
        assert_eq!(unescape_xml("Director&apos;s &amp; co"), "Director's & co");
    }
}
