//! A title split by chapters across workers (docs/split.md): the plan, the files each step leaves
//! for the join, and the join with its checks.
//!
//! The video is encoded in pieces of whole chapters (HandBrake's `--chapters a-b` starts at the
//! chapter's cell, without decoding what comes before); audio, subtitles and chapter marks come from
//! one continuous pass over the whole title, whose tiny picture also counts the title's frames. The
//! join appends the pieces with mkvmerge, takes every other track from the tracks pass, and checks,
//! before anything is put in place: frames (the pieces' sum, the joined file's and the tracks pass's
//! all equal), duration, every seam (no timestamp gap, a clean decode across it), audio against
//! video, chapter marks. Each piece was decoded whole by the worker that made it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rafty_core::job::ChapterRange;
use rafty_core::wire::Check;

pub use rafty_core::split::{Record, dir, piece_path, record_path, tracks_path};

/// Cut a title's chapters into `pieces` contiguous groups so that the longest group is as short as
/// it can be (the title is done when its longest piece is). Fewer groups when there are fewer
/// chapters; none of them empty.
pub fn plan(chapters: &[Duration], pieces: usize) -> Vec<ChapterRange> {
    let n = chapters.len();
    let k = pieces.min(n).max(1);
    let mut prefix = vec![0u128; n + 1];
    for (i, d) in chapters.iter().enumerate() {
        prefix[i + 1] = prefix[i] + d.as_millis();
    }
    let sum = |a: usize, b: usize| prefix[b] - prefix[a];
    // best[j][i]: the smallest possible longest group when the first i chapters make j groups.
    let mut best = vec![vec![u128::MAX; n + 1]; k + 1];
    let mut cut = vec![vec![0usize; n + 1]; k + 1];
    best[0][0] = 0;
    for j in 1..=k {
        for i in j..=n {
            for from in (j - 1)..i {
                if best[j - 1][from] == u128::MAX {
                    continue;
                }
                let longest = best[j - 1][from].max(sum(from, i));
                if longest < best[j][i] {
                    best[j][i] = longest;
                    cut[j][i] = from;
                }
            }
        }
    }
    let mut ranges = Vec::with_capacity(k);
    let mut end = n;
    for j in (1..=k).rev() {
        let from = cut[j][end];
        ranges.push(ChapterRange {
            first: from as u32 + 1,
            last: end as u32,
        });
        end = from;
    }
    ranges.reverse();
    ranges
}

/// The length of a range of chapters.
pub fn range_duration(chapters: &[Duration], range: ChapterRange) -> Duration {
    chapters
        .iter()
        .skip(range.first as usize - 1)
        .take((range.last - range.first + 1) as usize)
        .sum()
}

/// HandBrake's arguments for a video piece: only these chapters, no audio, no subtitles, no marks.
pub fn piece_args(range: ChapterRange) -> Vec<OsString> {
    ["--chapters", &range.to_string(), "-a", "none", "-s", "none"]
        .iter()
        .map(OsString::from)
        .collect()
}

/// HandBrake's arguments for the tracks pass: the preset's audio and subtitles and the chapter
/// marks, with a picture as cheap as HandBrake can make (its frames still count the title's).
pub fn tracks_args() -> Vec<OsString> {
    [
        "-e",
        "x264",
        "--encoder-preset",
        "ultrafast",
        "-q",
        "51",
        "-w",
        "32",
        "-l",
        "32",
        "--non-anamorphic",
        "--crop",
        "0:0:0:0",
        "--no-comb-detect",
        "--no-decomb",
        "--no-deinterlace",
        "--no-detelecine",
        "--no-hqdn3d",
        "--no-nlmeans",
        "--no-deblock",
        "--no-grayscale",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// Why a media tool could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It is not installed.
    #[error("{tool} not found: install {package} on this worker (a split title needs it)")]
    Missing {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// It ran and failed.
    #[error("{tool} failed on {}: {message}", path.display())]
    Failed {
        /// The program.
        tool: &'static str,
        /// The file it read or wrote.
        path: PathBuf,
        /// What it said.
        message: String,
    },
}

async fn run_tool(
    tool: &'static str,
    package: &'static str,
    args: &[OsString],
    path: &Path,
) -> Result<(bool, String, String), ToolError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ToolError::Missing { tool, package },
            _ => ToolError::Failed {
                tool,
                path: path.to_owned(),
                message: e.to_string(),
            },
        })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// What `ffprobe -v error ARGS PATH` prints, or its complaint.
async fn ffprobe(list: &[&str], path: &Path) -> Result<String, ToolError> {
    let mut argv: Vec<OsString> = ["-v", "error"].iter().map(OsString::from).collect();
    argv.extend(list.iter().map(OsString::from));
    argv.push(path.as_os_str().to_owned());
    let (ok, stdout, stderr) = run_tool("ffprobe", "ffmpeg", &argv, path).await?;
    if ok {
        Ok(stdout)
    } else {
        Err(ToolError::Failed {
            tool: "ffprobe",
            path: path.to_owned(),
            message: last_lines(&stderr),
        })
    }
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Every packet of one stream, `(pts, duration)` in seconds, in presentation order (demuxed, not
/// decoded).
async fn packets(path: &Path, stream: &str) -> Result<Vec<(f64, f64)>, ToolError> {
    let stdout = ffprobe(
        &[
            "-select_streams",
            stream,
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
        ],
        path,
    )
    .await?;
    let mut out: Vec<(f64, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let pts = f.next()?.trim().parse::<f64>().ok()?;
            let dur = f
                .next()
                .and_then(|d| d.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            Some((pts, dur))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// The video of a file as the join checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Frame start times, in presentation order (seconds).
    pub pts: Vec<f64>,
    /// The usual distance between two frames (the median).
    pub frame: f64,
}

impl Video {
    /// Read a file's video timestamps.
    pub async fn of(path: &Path) -> Result<Video, ToolError> {
        let pts: Vec<f64> = packets(path, "v:0").await?.iter().map(|p| p.0).collect();
        let mut deltas: Vec<f64> = pts.windows(2).map(|w| w[1] - w[0]).collect();
        deltas.sort_by(f64::total_cmp);
        let frame = deltas.get(deltas.len() / 2).copied().unwrap_or(0.0);
        Ok(Video { pts, frame })
    }

    /// Frames.
    pub fn frames(&self) -> u64 {
        self.pts.len() as u64
    }

    /// From the first frame's start to the last frame's end.
    pub fn duration(&self) -> f64 {
        match (self.pts.first(), self.pts.last()) {
            (Some(a), Some(b)) => b - a + self.frame,
            _ => 0.0,
        }
    }
}

/// Where a file's first audio stream ends (seconds), if it has one.
pub async fn audio_end(path: &Path) -> Result<Option<(f64, f64)>, ToolError> {
    let packets = packets(path, "a:0").await?;
    Ok(packets
        .iter()
        .map(|(pts, dur)| pts + dur)
        .reduce(f64::max)
        .map(|end| (end, packets.first().map_or(0.0, |p| p.1))))
}

/// The start times of a file's chapters (seconds).
pub async fn chapters(path: &Path) -> Result<Vec<f64>, ToolError> {
    let stdout = ffprobe(
        &["-show_entries", "chapter=start_time", "-of", "csv=p=0"],
        path,
    )
    .await?;
    Ok(stdout
        .lines()
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect())
}

/// Decode a file (or `window` seconds from `start`) and report whatever the decoder complains
/// about; `Ok(())` is a clean decode.
pub async fn decode(path: &Path, window: Option<(f64, f64)>) -> Result<(), ToolError> {
    let mut list: Vec<OsString> = ["-nostdin", "-v", "error"]
        .iter()
        .map(OsString::from)
        .collect();
    if let Some((start, _)) = window {
        list.extend(["-ss".into(), format!("{:.3}", start.max(0.0)).into()]);
    }
    list.extend(["-i".into(), path.as_os_str().to_owned()]);
    if let Some((_, len)) = window {
        list.extend(["-t".into(), format!("{len:.3}").into()]);
    }
    list.extend(["-map", "0", "-f", "null", "-"].iter().map(OsString::from));
    let (ok, _, stderr) = run_tool("ffmpeg", "ffmpeg", &list, path).await?;
    if ok && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(ToolError::Failed {
            tool: "ffmpeg",
            path: path.to_owned(),
            message: if stderr.trim().is_empty() {
                "exited with an error".to_owned()
            } else {
                last_lines(&stderr)
            },
        })
    }
}

/// Append the pieces' video and add the tracks pass's other tracks and chapters, into `out`.
pub async fn merge(pieces: &[PathBuf], tracks: &Path, out: &Path) -> Result<(), ToolError> {
    let mut list: Vec<OsString> = vec![
        "-q".into(),
        "-o".into(),
        out.as_os_str().to_owned(),
        "--no-chapters".into(),
    ];
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            list.push("+".into());
        }
        list.push(piece.as_os_str().to_owned());
    }
    list.extend(["--no-video".into(), tracks.as_os_str().to_owned()]);
    let (ok, stdout, stderr) = run_tool("mkvmerge", "mkvtoolnix", &list, out).await?;
    // mkvmerge exits 1 for warnings, with a complete file.
    if ok || (std::fs::metadata(out).is_ok_and(|m| m.len() > 0) && !stdout.contains("Error:")) {
        Ok(())
    } else {
        Err(ToolError::Failed {
            tool: "mkvmerge",
            path: out.to_owned(),
            message: last_lines(&format!("{stdout}\n{stderr}")),
        })
    }
}

/// What the join knows before it checks: each piece's and the tracks pass's own measurements.
pub struct Expected<'a> {
    /// Each piece's record, in order.
    pub pieces: &'a [Record],
    /// The tracks pass's record.
    pub tracks: &'a Record,
    /// The chapter starts of the tracks pass (the whole title's marks).
    pub chapters: &'a [f64],
    /// Whether the title has sound.
    pub audio: bool,
    /// The file the tracks pass made (for its audio).
    pub tracks_file: &'a Path,
}

/// Check a joined file against what its parts measured. Every check is run and reported, with the
/// joined video's duration; the join stands only if all pass.
pub async fn verify(
    joined: &Path,
    expected: &Expected<'_>,
) -> Result<(Vec<Check>, f64), ToolError> {
    let mut checks = Vec::new();
    let mut check = |name: String, passed: bool, detail: String| {
        checks.push(Check {
            name,
            passed,
            detail,
        })
    };
    let video = Video::of(joined).await?;
    let sum: u64 = expected.pieces.iter().map(|p| p.frames).sum();
    check(
        "frames".into(),
        video.frames() == sum && sum == expected.tracks.frames,
        format!(
            "joined {} frames, pieces {} ({}), whole-title pass {}",
            video.frames(),
            sum,
            expected
                .pieces
                .iter()
                .map(|p| p.frames.to_string())
                .collect::<Vec<_>>()
                .join(" + "),
            expected.tracks.frames
        ),
    );
    let frame = video.frame;
    let gap = (video.duration() - expected.tracks.video_secs).abs();
    check(
        "duration".into(),
        gap <= frame + 0.0015,
        format!(
            "joined {:.3} s, whole-title pass {:.3} s (one frame is {:.3} s)",
            video.duration(),
            expected.tracks.video_secs,
            frame
        ),
    );
    // The frames of piece i end at the sum of the frames before it.
    let mut boundary = 0usize;
    for (i, piece) in expected.pieces.iter().enumerate() {
        boundary += piece.frames as usize;
        if i + 1 == expected.pieces.len() {
            break;
        }
        let (before, after) = (
            video.pts.get(boundary.wrapping_sub(1)).copied(),
            video.pts.get(boundary).copied(),
        );
        let (passed, detail) = match (before, after) {
            (Some(a), Some(b)) => {
                let step = b - a;
                // Timestamps are whole milliseconds in Matroska: a frame of 33.367 ms is 33 or 34.
                let ok = (step - frame).abs() <= 0.0015;
                let decoded = decode(joined, Some((a - 2.0, 4.0))).await;
                (
                    ok && decoded.is_ok(),
                    format!(
                        "at {a:.3} s → {b:.3} s: {:.1} ms between frames (one frame {:.1} ms); decode across it: {}",
                        step * 1000.0,
                        frame * 1000.0,
                        match &decoded {
                            Ok(()) => "clean".to_owned(),
                            Err(e) => e.to_string(),
                        }
                    ),
                )
            }
            _ => (
                false,
                format!("the joined file has no frame {boundary} where piece {i} should end"),
            ),
        };
        check(format!("seam {}", i + 1), passed, detail);
    }
    let largest = video
        .pts
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    check(
        "gaps".into(),
        largest <= frame + 0.0015,
        format!(
            "largest step between two frames {:.1} ms (one frame {:.1} ms)",
            largest * 1000.0,
            frame * 1000.0
        ),
    );
    match (audio_end(joined).await?, expected.audio) {
        (Some((end, audio_frame)), _) => {
            let video_end = video.pts.last().copied().unwrap_or(0.0) + frame;
            let off = (end - video_end).abs();
            check(
                "audio".into(),
                off <= frame + audio_frame + 0.0015,
                format!(
                    "audio ends at {end:.3} s, video at {video_end:.3} s ({:.1} ms apart; allowed one video and one audio frame, {:.1} ms)",
                    off * 1000.0,
                    (frame + audio_frame) * 1000.0
                ),
            );
        }
        (None, true) => check(
            "audio".into(),
            false,
            format!(
                "the title has sound but the joined file has none (tracks pass {})",
                expected.tracks_file.display()
            ),
        ),
        (None, false) => check("audio".into(), true, "the title has no sound".into()),
    }
    let marks = chapters(joined).await?;
    let same = marks.len() == expected.chapters.len()
        && marks
            .iter()
            .zip(expected.chapters)
            .all(|(a, b)| (a - b).abs() <= 0.0015);
    check(
        "chapters".into(),
        same,
        format!(
            "{} chapter marks, the whole-title pass has {}",
            marks.len(),
            expected.chapters.len()
        ),
    );
    Ok((checks, video.duration()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    fn shown(ranges: &[ChapterRange]) -> Vec<String> {
        ranges.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn even_chapters_make_even_pieces() {
        assert_eq!(shown(&plan(&secs(&[20; 8]), 2)), ["1-4", "5-8"]);
        assert_eq!(
            shown(&plan(&secs(&[20; 8]), 4)),
            ["1-2", "3-4", "5-6", "7-8"]
        );
    }

    #[test]
    fn uneven_chapters_are_grouped_by_duration() {
        // 5 + 5 + 110 | 30: the longest piece is 120 s; 5 + 5 | 110 + 30 would be 140.
        assert_eq!(shown(&plan(&secs(&[5, 5, 110, 30]), 2)), ["1-3", "4-4"]);
        // 100 | 10 + 10 + 10 + 10 | 60 and 100 | 10 + 10 + 10 + 10 + 60 tie at 100 s: only the longest
        // piece is what the plan promises.
        let chapters = secs(&[100, 10, 10, 10, 10, 60]);
        let longest = plan(&chapters, 3)
            .into_iter()
            .map(|r| range_duration(&chapters, r))
            .max();
        assert_eq!(longest, Some(Duration::from_secs(100)));
        assert_eq!(
            shown(&plan(&secs(&[10, 50, 40, 10, 50, 40]), 3)),
            ["1-2", "3-4", "5-6"]
        );
    }

    #[test]
    fn never_more_pieces_than_chapters_and_every_chapter_once() {
        assert_eq!(shown(&plan(&secs(&[30, 30]), 8)), ["1-1", "2-2"]);
        assert_eq!(shown(&plan(&secs(&[30]), 4)), ["1-1"]);
        let chapters = secs(&[7, 3, 12, 9, 1, 1, 40, 8, 8, 15, 2]);
        for k in 1..=11 {
            let ranges = plan(&chapters, k);
            assert_eq!(ranges.len(), k);
            let mut next = 1;
            for r in &ranges {
                assert_eq!(r.first, next);
                assert!(r.last >= r.first);
                next = r.last + 1;
            }
            assert_eq!(next, 12);
        }
    }

    #[test]
    fn range_durations_add_up() {
        let chapters = secs(&[5, 5, 110, 30]);
        assert_eq!(
            range_duration(&chapters, ChapterRange { first: 2, last: 3 }),
            Duration::from_secs(115)
        );
    }
}
