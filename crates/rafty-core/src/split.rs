//! The files of a title split by chapters (docs/split.md), as every program that touches them names
//! them: the workers that make and join the steps, and `rafty-store`, which keeps them for workers
//! without shared storage.
//!
//! Each step of split job `whole` leaves its file in `<output-dir>/.rafty-split/<whole>/` (a name
//! starting with `.`, which outputs never have) and, once the file is complete and verified, a
//! [`Record`] beside it. A file without its record is work in progress.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The directory under the output directory where split titles' steps live.
pub const SPLIT_DIR: &str = ".rafty-split";
/// The tracks pass's file name.
pub const TRACKS_NAME: &str = "tracks.mkv";

/// Where the steps of split job `whole` leave their files.
pub fn dir(output_dir: &Path, whole: Uuid) -> PathBuf {
    output_dir.join(SPLIT_DIR).join(whole.to_string())
}

/// The file name of piece `index`.
pub fn piece_name(index: u32) -> String {
    format!("piece-{index:02}.mkv")
}

/// The video of piece `index`.
pub fn piece_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(piece_name(index))
}

/// The tracks pass's file.
pub fn tracks_path(dir: &Path) -> PathBuf {
    dir.join(TRACKS_NAME)
}

/// Whether `name` is the name of a step's file (`piece-NN.mkv` or `tracks.mkv`), and nothing else:
/// the store takes and serves no other name under a split title.
pub fn is_step_file(name: &str) -> bool {
    if name == TRACKS_NAME {
        return true;
    }
    name.strip_prefix("piece-")
        .and_then(|n| n.strip_suffix(".mkv"))
        .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The record a finished step writes beside its file (`piece-00.mkv.json`): its presence says the
/// file is complete and verified.
pub fn record_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().expect("a file").to_os_string();
    name.push(".json");
    file.with_file_name(name)
}

/// What a finished step made, as its worker measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    /// The step's job.
    pub job: Uuid,
    /// The worker's host.
    pub host: String,
    /// Video frames (for the tracks pass: the whole title's, one tiny frame per frame).
    pub frames: u64,
    /// Video duration in seconds: from the first frame's start to the last frame's end.
    pub video_secs: f64,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's SHA-256, lower-case hex: what a worker that fetches it from the store checks.
    pub sha256: String,
}

impl Record {
    /// Read a step's record, if the step is done.
    pub fn read(file: &Path) -> Option<Record> {
        std::fs::read(record_path(file))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Write it atomically (temporary name, then rename), after the file it describes is in place.
    pub fn write(&self, file: &Path) -> std::io::Result<()> {
        let path = record_path(file);
        let temp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&temp, serde_json::to_vec_pretty(self).expect("serializes"))?;
        std::fs::rename(&temp, &path)
    }

    /// The records of the finished steps in `dir`, by file name.
    pub fn all(dir: &Path) -> std::collections::BTreeMap<String, Record> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                if !is_step_file(&name) {
                    return None;
                }
                let record = Record::read(&e.path())?;
                Some((name, record))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_step_names_are_step_files() {
        for ok in ["piece-00.mkv", "piece-98.mkv", "tracks.mkv"] {
            assert!(is_step_file(ok), "{ok}");
        }
        for bad in [
            "piece-0.mkv",
            "piece-000.mkv",
            "piece-0a.mkv",
            "piece-00.mkv.json",
            "../piece-00.mkv",
            "tracks.mkv.json",
            "Film.mkv",
            "",
        ] {
            assert!(!is_step_file(bad), "{bad}");
        }
        assert_eq!(piece_name(7), "piece-07.mkv");
        assert!(is_step_file(&piece_name(42)));
    }

    #[test]
    fn records_are_listed_only_beside_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record {
            job: Uuid::nil(),
            host: "h".into(),
            frames: 10,
            video_secs: 0.4,
            size: 3,
            sha256: "0".repeat(64),
        };
        let piece = piece_path(dir.path(), 0);
        std::fs::write(&piece, b"abc").unwrap();
        // A file without its record is not listed; a stray name is never listed.
        std::fs::write(dir.path().join("other.mkv"), b"x").unwrap();
        record.write(&dir.path().join("other.mkv")).unwrap();
        assert!(Record::all(dir.path()).is_empty());
        record.write(&piece).unwrap();
        let all = Record::all(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all["piece-00.mkv"], record);
    }
}
