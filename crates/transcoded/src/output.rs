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

use rafty_core::Failure;
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
pub fn temp_path(output: &Path, job_id: &str) -> PathBuf {
    let name = output
        .file_name()
        .expect("outputs have a file name")
        .to_string_lossy();
    output.with_file_name(format!(
        ".{name}.{}.{}.part",
        &job_id[..job_id.len().min(8)],
        std::process::id()
    ))
}

/// Create the temporary file to prove the directory is writable before HandBrake runs.
pub fn prepare(dir: &Path, temp: &Path) -> Result<(), Failure> {
    fs::create_dir_all(dir).map_err(|e| io_failure(dir, &e))?;
    File::create(temp).map_err(|e| io_failure(temp, &e))?;
    Ok(())
}

/// Make the verified temporary file the output: sidecar first, then the video (never replacing a file).
pub fn commit(temp: &Path, output: &Path, sidecar: &Sidecar) -> Result<(), Failure> {
    let dir = output.parent().expect("outputs have a directory");
    let side = sidecar_path(output);
    let side_temp = temp.with_extension("sidecar");
    let write_sidecar = |sidecar: &Sidecar| -> io::Result<()> {
        let mut f = File::create(&side_temp)?;
        f.write_all(&serde_json::to_vec_pretty(sidecar).expect("sidecars serialize"))?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&side_temp, &side)
    };
    write_sidecar(sidecar).map_err(|e| {
        let _ = fs::remove_file(&side_temp);
        io_failure(&side, &e)
    })?;
    File::open(temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_failure(temp, &e))?;
    match fs::hard_link(temp, output) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another worker finished the same job in the moment since existing() looked (a
            // redelivery raced us): its copy stands, and the sidecar is made to describe it.
            let _ = fs::remove_file(temp);
            let theirs = fs::metadata(output).map_err(|e| io_failure(output, &e))?;
            let mut fixed = sidecar.clone();
            fixed.output_size = theirs.len();
            return write_sidecar(&fixed).map_err(|e| io_failure(&side, &e));
        }
        Err(e) => return Err(io_failure(output, &e)),
    }
    fs::remove_file(temp).map_err(|e| io_failure(temp, &e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failure(dir, &e))?;
    Ok(())
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
        let temp = temp_path(&out, "0123456789");
        prepare(&dir, &temp).unwrap();
        fs::write(&temp, b"abc").unwrap();
        let mine = sidecar("job-1", 1);
        assert!(matches!(existing(&out, &mine).unwrap(), Existing::Absent));
        commit(&temp, &out, &mine).unwrap();
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
}
