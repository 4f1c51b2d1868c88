//! Putting a finished encode in place without ever leaving a partial file that looks complete.
//!
//! The encode is written to a hidden temporary name in the destination directory. When it is verified:
//! the sidecar manifest is written first (temp, fsync, rename), then the video is fsynced and
//! hard-linked to its final name (a link never replaces an existing file, so another job's output is
//! never overwritten), the temporary name is removed and the directory fsynced. A crash at any point
//! leaves either no final video, or a final video whose sidecar names the job that made it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Failure;
use serde::{Deserialize, Serialize};

/// Suffix of the sidecar manifest written beside each output.
pub const SIDECAR_SUFFIX: &str = ".rafty.json";

/// What Rafty records beside each output, to recognise it on a redelivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Sidecar {
    /// The job that made the output.
    pub job_id: String,
    /// The source image as the job named it.
    pub source_path: PathBuf,
    /// Source size in bytes.
    pub source_size: u64,
    /// Source SHA-256, when the job carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// Source volume label, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_label: Option<String>,
    /// The title encoded.
    pub title: u32,
    /// The preset used.
    pub preset: String,
    /// `HandBrake x.y.z`.
    pub handbrake: String,
    /// The output's file name.
    pub output: String,
    /// The output's size in bytes.
    pub output_size: u64,
    /// The output's SHA-256 (hex), hashed before it was put in place (absent in sidecars made
    /// before Rafty recorded it; `rafty-replicate` then records the hash it first reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// The output's duration in seconds, as HandBrake scanned it.
    pub output_duration_secs: f64,
    /// The source title's duration in seconds.
    pub title_duration_secs: f64,
    /// The worker that made it.
    pub host: String,
    /// When it was finished (RFC 3339).
    pub finished_at: String,
}

impl Sidecar {
    /// Whether this output was made by the same work: the same job, or the same title of the same
    /// source with the same preset (a resubmission of one image).
    pub fn same_work(&self, other: &Sidecar) -> bool {
        if self.job_id == other.job_id {
            return true;
        }
        let sha_agrees = match (&self.source_sha256, &other.source_sha256) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        sha_agrees
            && self.source_size == other.source_size
            && self.source_label == other.source_label
            && self.title == other.title
            && self.preset == other.preset
    }
}

/// Path of the sidecar of `output`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .expect("outputs have a file name")
        .to_os_string();
    name.push(SIDECAR_SUFFIX);
    output.with_file_name(name)
}

/// The state of an output path before encoding.
#[derive(Debug)]
pub enum Existing {
    /// Nothing there (or a sidecar whose video never got linked): encode.
    Absent,
    /// The same work is already done: skip.
    Done(Box<Sidecar>),
}

/// Look at what is at `output` now: done by the same work, absent, or someone else's file.
pub fn existing(output: &Path, expected: &Sidecar) -> Result<Existing, Failure> {
    let video = fs::metadata(output);
    let sidecar = fs::read(sidecar_path(output))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok());
    match (video, sidecar) {
        (Err(e), _) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Absent),
        (Err(e), _) => Err(io_failure(output, &e)),
        (Ok(meta), Some(found)) if found.same_work(expected) && meta.len() == found.output_size => {
            Ok(Existing::Done(Box::new(found)))
        }
        (Ok(_), Some(found)) => Err(Failure::OutputConflict(format!(
            "{} already exists, made by job {} from {}; move it away or submit with another output name",
            output.display(),
            found.job_id,
            found.source_path.display()
        ))),
        (Ok(_), None) => Err(Failure::OutputConflict(format!(
            "{} already exists and was not made by Rafty (no {} beside it); move it away or submit with another output name",
            output.display(),
            SIDECAR_SUFFIX
        ))),
    }
}

/// A hidden temporary name for an encode of `output`, unique to this job and process.
pub fn temp_path(output: &Path, job_id: &str, host: &str) -> PathBuf {
    let name = output
        .file_name()
        .expect("outputs have a file name")
        .to_string_lossy();
    // A nonce besides the job and the pid: workers in containers all run as pid 1, and two of them
    // may encode one job at once (a redelivery after a lost connection). The owner (host and pid)
    // lets a worker restarted on the same host remove what its killed predecessor left at once.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    output.with_file_name(format!(
        ".{name}.{}.{}.{}.part",
        &job_id[..job_id.len().min(8)],
        owner_tag(host, std::process::id()),
        &nonce[..8]
    ))
}

/// `HOSTHASH-PID`: who writes a temporary file. The host name is hashed (FNV-1a) because it may hold
/// dots, which separate the parts of a temporary name.
fn owner_tag(host: &str, pid: u32) -> String {
    let hash = host.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}-{pid}")
}

/// The owner of a temporary file named by [`temp_path`] (or its `.sidecar` companion), when it is
/// a process of `host` that no longer runs.
fn owner_is_dead_here(name: &str, host: &str) -> bool {
    let Some(stem) = name
        .strip_suffix(".part")
        .or_else(|| name.strip_suffix(".sidecar"))
    else {
        return false;
    };
    let Some((rest, _nonce)) = stem.rsplit_once('.') else {
        return false;
    };
    let Some((_, owner)) = rest.rsplit_once('.') else {
        return false;
    };
    let Some(pid) = owner
        .split_once('-')
        .and_then(|(_, p)| p.parse::<u32>().ok())
    else {
        return false;
    };
    owner == owner_tag(host, pid)
        && pid != std::process::id()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Create the temporary file to prove the directory is writable before HandBrake runs.
pub fn prepare(dir: &Path, temp: &Path) -> Result<(), Failure> {
    fs::create_dir_all(dir).map_err(|e| io_failure(dir, &e))?;
    File::create_new(temp).map_err(|e| io_failure(temp, &e))?;
    Ok(())
}

fn read_sidecar(path: &Path) -> Option<Sidecar> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn sync_dir(dir: &Path) -> Result<(), Failure> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failure(dir, &e))
}

/// How a commit ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Our file is the output now.
    Ours,
    /// The same work finished elsewhere first (a redelivery raced us); its output stands, ours is gone.
    Theirs,
}

/// Make the verified temporary file the output: sidecar first, then the video. Neither is ever put
/// over another job's: both go in with hard links, which fail when the name is taken, and a sidecar
/// already there is replaced only when its video never arrived (a crashed attempt).
pub fn commit(temp: &Path, output: &Path, sidecar: &Sidecar) -> Result<Committed, Failure> {
    let dir = output.parent().expect("outputs have a directory");
    let side = sidecar_path(output);
    let side_temp = temp.with_extension("sidecar");
    let cleanup = || {
        let _ = fs::remove_file(temp);
        let _ = fs::remove_file(&side_temp);
    };
    let written = (|| -> io::Result<()> {
        let mut f = File::create(&side_temp)?;
        f.write_all(&serde_json::to_vec_pretty(sidecar).expect("sidecars serialize"))?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        cleanup();
        return Err(io_failure(&side_temp, &e));
    }
    let conflict = |found: &Sidecar| {
        Failure::OutputConflict(format!(
            "{} is being made by job {} from {}; move it away or submit with another output name",
            output.display(),
            found.job_id,
            found.source_path.display()
        ))
    };
    // The sidecar: linked if the name is free; else decide by what is there.
    match fs::hard_link(&side_temp, &side) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let found = read_sidecar(&side);
            let video = output.exists();
            match (found, video) {
                (Some(f), true) if f.same_work(sidecar) => {
                    cleanup();
                    return Ok(Committed::Theirs);
                }
                (Some(f), true) => {
                    cleanup();
                    return Err(conflict(&f));
                }
                (None, true) => {
                    cleanup();
                    return Err(Failure::OutputConflict(format!(
                        "{} already exists and was not made by Rafty; move it away or submit with another output name",
                        output.display()
                    )));
                }
                // No video: a crashed attempt's sidecar (or an unreadable one). Ours replaces it.
                (_, false) => {
                    fs::rename(&side_temp, &side).map_err(|e| {
                        cleanup();
                        io_failure(&side, &e)
                    })?;
                }
            }
        }
        Err(e) => {
            cleanup();
            return Err(io_failure(&side, &e));
        }
    }
    let _ = fs::remove_file(&side_temp);
    sync_dir(dir)?;
    File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_failure(temp, &e))?;
    match fs::hard_link(temp, output) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // The same work finished in the moment between our sidecar and our video: the sidecar on
            // disk says whose the video is.
            cleanup();
            return match read_sidecar(&side) {
                Some(f) if f.same_work(sidecar) => Ok(Committed::Theirs),
                Some(f) => Err(conflict(&f)),
                None => Err(Failure::OutputConflict(format!(
                    "{} appeared without a sidecar",
                    output.display()
                ))),
            };
        }
        Err(e) => {
            cleanup();
            return Err(io_failure(output, &e));
        }
    }
    fs::remove_file(temp).map_err(|e| io_failure(temp, &e))?;
    sync_dir(dir)?;
    Ok(Committed::Ours)
}

/// Remove temporary encodes (`.*.part`, and their `.sidecar` companions) under `root` that a killed
/// worker left behind: those of a process of this `host` that no longer runs, at once, and any that
/// nothing has written for `idle` (a live encode writes all the time, so it is never this old,
/// whichever host it runs on). Returns how many were removed.
pub fn sweep_stale_temps(root: &Path, idle: std::time::Duration, host: &str) -> usize {
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let temp =
                name.starts_with('.') && (name.ends_with(".part") || name.ends_with(".sidecar"));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= idle);
            let orphan = temp && owner_is_dead_here(&name, host);
            if kind.is_file() && temp && (old || orphan) && fs::remove_file(&path).is_ok() {
                tracing::info!(file = %path.display(), "removed a temporary encode left by a stopped worker");
                removed += 1;
            }
        }
    }
    removed
}

/// Turn an I/O error on `path` into the failure class it deserves.
pub fn io_failure(path: &Path, e: &io::Error) -> Failure {
    let what = format!("{}: {e}", path.display());
    match e.raw_os_error() {
        Some(libc_enospc) if libc_enospc == 28 || libc_enospc == 122 => Failure::DiskFull(what),
        _ => Failure::OutputUnwritable(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(job: &str, title: u32) -> Sidecar {
        Sidecar {
            job_id: job.into(),
            source_path: "/iso/a.iso".into(),
            source_size: 10,
            source_sha256: None,
            source_label: Some("A".into()),
            title,
            preset: "P".into(),
            handbrake: "HandBrake 1.6.1".into(),
            output: "a.mkv".into(),
            output_size: 3,
            output_sha256: None,
            output_duration_secs: 20.0,
            title_duration_secs: 20.0,
            host: "h".into(),
            finished_at: "2026-11-23T00:00:00Z".into(),
        }
    }

    #[test]
    fn commit_links_and_refuses_to_replace_others_work() {
        let dir = std::env::temp_dir().join(format!("rafty-output-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.mkv");
        let temp = temp_path(&out, "0123456789", "here");
        prepare(&dir, &temp).unwrap();
        fs::write(&temp, b"abc").unwrap();
        let mine = sidecar("job-1", 1);
        assert!(matches!(existing(&out, &mine).unwrap(), Existing::Absent));
        assert_eq!(commit(&temp, &out, &mine).unwrap(), Committed::Ours);
        assert!(!temp.exists());
        assert_eq!(fs::read(&out).unwrap(), b"abc");
        assert!(matches!(existing(&out, &mine).unwrap(), Existing::Done(_)));
        assert!(
            matches!(
                existing(&out, &sidecar("job-2", 1)).unwrap(),
                Existing::Done(_)
            ),
            "same work"
        );
        assert!(matches!(
            existing(&out, &sidecar("job-2", 2)),
            Err(Failure::OutputConflict(_))
        ));
        fs::write(dir.join("b.mkv"), b"x").unwrap();
        assert!(matches!(
            existing(&dir.join("b.mkv"), &mine),
            Err(Failure::OutputConflict(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporary_encodes_are_swept_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("Shows/X");
        fs::create_dir_all(&sub).unwrap();
        let stale = sub.join(".X - s01e01.mkv.0123abcd.1.deadbeef.part");
        let fresh = sub.join(".X - s01e02.mkv.0123abcd.1.cafebabe.part");
        let video = sub.join("X - s01e03.mkv");
        for f in [&stale, &fresh, &video] {
            fs::write(f, b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        File::options()
            .write(true)
            .open(&video)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            sweep_stale_temps(dir.path(), std::time::Duration::from_secs(600), "here"),
            1
        );
        assert!(!stale.exists() && fresh.exists() && video.exists());
    }

    #[test]
    fn a_fresh_temp_of_a_dead_worker_of_this_host_is_removed_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("Film.mkv");
        // Above the kernel's largest pid (4194304): no process has it.
        let dead = 4_194_305;
        let named = |host: &str, pid: u32, ext: &str| {
            dir.path().join(format!(
                ".Film.mkv.0123abcd.{}.9f8e7d6c.{ext}",
                owner_tag(host, pid)
            ))
        };
        let orphan = named("attic.lan", dead, "part");
        let orphan_sidecar = named("attic.lan", dead, "sidecar");
        let elsewhere = named("den.lan", dead, "part");
        let alive = temp_path(&out, "0123abcd", "attic.lan");
        let legacy = dir.path().join(".Film.mkv.0123abcd.4194305.9f8e7d6c.part");
        for f in [&orphan, &orphan_sidecar, &elsewhere, &alive, &legacy] {
            File::create(f).unwrap();
        }
        let idle = std::time::Duration::from_secs(600);
        assert_eq!(sweep_stale_temps(dir.path(), idle, "attic.lan"), 2);
        assert!(!orphan.exists() && !orphan_sidecar.exists());
        assert!(
            elsewhere.exists() && alive.exists() && legacy.exists(),
            "another host's, our own and an unparsable one stay until they are idle"
        );
    }

    #[test]
    fn two_jobs_racing_for_one_name_never_swap_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("same name.mkv");
        let (a, b) = (sidecar("job-a", 1), sidecar("job-b", 7));
        // Both checked before either committed.
        assert!(matches!(existing(&out, &a).unwrap(), Existing::Absent));
        assert!(matches!(existing(&out, &b).unwrap(), Existing::Absent));
        let (ta, tb) = (
            temp_path(&out, "aaaaaaaa", "here"),
            temp_path(&out, "bbbbbbbb", "here"),
        );
        prepare(dir.path(), &ta).unwrap();
        prepare(dir.path(), &tb).unwrap();
        fs::write(&ta, b"from a").unwrap();
        fs::write(&tb, b"from b").unwrap();
        assert_eq!(commit(&ta, &out, &a).unwrap(), Committed::Ours);
        assert!(matches!(
            commit(&tb, &out, &b),
            Err(Failure::OutputConflict(_))
        ));
        assert_eq!(fs::read(&out).unwrap(), b"from a");
        let side: Sidecar = serde_json::from_slice(&fs::read(sidecar_path(&out)).unwrap()).unwrap();
        assert_eq!(side.job_id, "job-a", "a's sidecar stands");
        assert!(!tb.exists(), "the loser's temporary file is removed");

        // The same work racing: the second finds the first's output and stands down.
        let tc = temp_path(&out, "cccccccc", "here");
        prepare(dir.path(), &tc).unwrap();
        assert_eq!(
            commit(&tc, &out, &sidecar("job-a", 1)).unwrap(),
            Committed::Theirs
        );
        assert!(!tc.exists());

        // A sidecar whose video never arrived (a crash in between) is replaced.
        let other = dir.path().join("other.mkv");
        fs::write(sidecar_path(&other), serde_json::to_vec(&b).unwrap()).unwrap();
        let td = temp_path(&other, "dddddddd", "here");
        prepare(dir.path(), &td).unwrap();
        assert_eq!(commit(&td, &other, &a).unwrap(), Committed::Ours);
    }
}
