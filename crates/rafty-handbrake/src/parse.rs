//! Parsers for what HandBrakeCLI prints.

use std::time::Duration;

use serde::Deserialize;

/// One progress report of an encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Current task (HandBrake counts passes as tasks).
    pub task: u32,
    /// Number of tasks.
    pub tasks: u32,
    /// Percent of the current task, 0 to 100.
    pub percent: f64,
    /// Current rate in frames per second, when HandBrake gives it.
    pub fps: Option<f64>,
    /// Estimated time left, when HandBrake gives it.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Overall completion from 0 to 1 across all tasks.
    pub fn fraction(&self) -> f64 {
        let tasks = f64::from(self.tasks.max(1));
        let done = f64::from(self.task.saturating_sub(1)) + self.percent / 100.0;
        (done / tasks).clamp(0.0, 1.0)
    }
}

/// Parse one plain progress line:
/// `Encoding: task 1 of 1, 29.59 % (268.82 fps, avg 256.92 fps, ETA 00h00m09s)`.
pub fn parse_progress(line: &str) -> Option<Progress> {
    let rest = line.trim().strip_prefix("Encoding: task ")?;
    let (task, rest) = rest.split_once(" of ")?;
    let (tasks, rest) = rest.split_once(", ")?;
    let (percent, rest) = rest.split_once(" %")?;
    let mut progress = Progress {
        task: task.trim().parse().ok()?,
        tasks: tasks.trim().parse().ok()?,
        percent: percent.trim().parse().ok()?,
        fps: None,
        eta: None,
    };
    if !(0.0..=100.0).contains(&progress.percent) {
        return None;
    }
    if let Some(inner) = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
    {
        for part in inner.split(", ") {
            if let Some(fps) = part.strip_suffix(" fps")
                && !fps.starts_with("avg")
            {
                progress.fps = fps.trim().parse().ok();
            } else if let Some(eta) = part.strip_prefix("ETA ") {
                progress.eta = parse_eta(eta);
            }
        }
    }
    Some(progress)
}

fn parse_eta(s: &str) -> Option<Duration> {
    let (h, rest) = s.split_once('h')?;
    let (m, rest) = rest.split_once('m')?;
    let sec = rest.strip_suffix('s')?;
    let secs = h
        .parse::<u64>()
        .ok()?
        .checked_mul(3600)?
        .checked_add(m.parse::<u64>().ok()?.checked_mul(60)?)?
        .checked_add(sec.parse::<u64>().ok()?)?;
    Some(Duration::from_secs(secs))
}

/// One title of a scanned source.
#[derive(Debug, Clone, PartialEq)]
pub struct Title {
    /// HandBrake's title number (`-t`), from 1.
    pub index: u32,
    /// Length of the title.
    pub duration: Duration,
    /// Number of chapters.
    pub chapters: usize,
    /// Length of each chapter (the layout that tells duplicate titles apart).
    pub chapter_durations: Vec<Duration>,
    /// Number of audio tracks.
    pub audio_tracks: usize,
    /// Language of each audio track (ISO 639-2, `und` when the disc does not say).
    pub audio_languages: Vec<String>,
    /// Frame width and height.
    pub size: (u32, u32),
}

/// The result of `HandBrakeCLI --scan --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Titles found, in HandBrake's order.
    pub titles: Vec<Title>,
    /// The title HandBrake calls the main feature, when the disc says (DVDs without menus do not).
    pub main_feature: Option<u32>,
}

impl Scan {
    /// The main feature: HandBrake's pick, else the longest title (the first of equals).
    pub fn main_feature(&self) -> Option<&Title> {
        if let Some(index) = self.main_feature
            && let Some(t) = self.titles.iter().find(|t| t.index == index)
        {
            return Some(t);
        }
        self.titles
            .iter()
            .fold(None, |best: Option<&Title>, t| match best {
                Some(b) if b.duration >= t.duration => Some(b),
                _ => Some(t),
            })
    }

    /// The title with this number.
    pub fn title(&self, index: u32) -> Option<&Title> {
        self.titles.iter().find(|t| t.index == index)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawScan {
    #[serde(default)]
    main_feature: i64,
    #[serde(default)]
    title_list: Vec<RawTitle>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTitle {
    index: u32,
    duration: RawDuration,
    #[serde(default)]
    chapter_list: Vec<RawChapter>,
    #[serde(default)]
    audio_list: Vec<serde_json::Value>,
    #[serde(default)]
    geometry: Option<RawGeometry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawChapter {
    #[serde(default)]
    duration: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawDuration {
    #[serde(default)]
    ticks: u64,
    #[serde(default)]
    hours: u64,
    #[serde(default)]
    minutes: u64,
    #[serde(default)]
    seconds: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawGeometry {
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

impl RawDuration {
    fn to_duration(&self) -> Duration {
        // Ticks are 90 kHz and exact; the h/m/s fields are rounded.
        if self.ticks > 0 {
            // Whole seconds first, so that no multiplication can overflow.
            Duration::from_secs(self.ticks / 90_000)
                + Duration::from_nanos((self.ticks % 90_000) * 100_000 / 9)
        } else {
            Duration::from_secs(
                self.hours
                    .saturating_mul(3600)
                    .saturating_add(self.minutes.saturating_mul(60))
                    .saturating_add(self.seconds),
            )
        }
    }
}

const SCAN_MARKER: &str = "JSON Title Set:";

/// Parse the title set from scan stdout, which mixes `Version: {...}`, libdvdread banners and a
/// pretty-printed `JSON Title Set: {...}`. Returns `None` when no title set is there.
pub fn parse_scan(stdout: &str) -> Result<Scan, String> {
    let at = stdout
        .find(SCAN_MARKER)
        .ok_or_else(|| format!("no {SCAN_MARKER:?} in HandBrake's scan output"))?;
    let rest = &stdout[at + SCAN_MARKER.len()..];
    let raw: RawScan = serde_json::Deserializer::from_str(rest)
        .into_iter::<RawScan>()
        .next()
        .ok_or_else(|| "empty title set".to_owned())?
        .map_err(|e| format!("title set is not the JSON expected: {e}"))?;
    let titles = raw
        .title_list
        .into_iter()
        .map(|t| {
            let duration = t.duration.to_duration();
            Title {
                index: t.index,
                duration,
                chapters: t.chapter_list.len(),
                chapter_durations: t
                    .chapter_list
                    .iter()
                    .map(|c| {
                        c.duration
                            .as_ref()
                            .map(RawDuration::to_duration)
                            .unwrap_or_default()
                    })
                    .collect(),
                audio_tracks: t.audio_list.len(),
                audio_languages: t
                    .audio_list
                    .iter()
                    .map(|a| a["LanguageCode"].as_str().unwrap_or("und").to_owned())
                    .collect(),
                size: t.geometry.map(|g| (g.width, g.height)).unwrap_or((0, 0)),
            }
        })
        .collect();
    Ok(Scan {
        titles,
        main_feature: u32::try_from(raw.main_feature).ok().filter(|&i| i > 0),
    })
}

/// Preset names from `HandBrakeCLI -z` (written to stderr, after HandBrake's start-up log): built-ins
/// are indented four spaces under a `Category/` line; presets imported with `--preset-import-file`
/// stand at the left margin; descriptions are indented deeper (or four spaces under an import).
pub fn parse_preset_list(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut started = false;
    let mut in_category = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        if indent == 0 && name.ends_with('/') {
            started = true;
            in_category = true;
            continue;
        }
        if !started {
            continue;
        }
        match indent {
            0 if name != "HandBrake has exited." && !name.starts_with('[') => {
                names.push(name.to_owned());
                in_category = false;
            }
            4 if in_category => names.push(name.to_owned()),
            _ => {}
        }
    }
    names
}

/// Words that mark a line of HandBrake's log as saying what went wrong.
const SIGNS: [&str; 8] = [
    "No title found",
    "Invalid",
    "invalid",
    "failed",
    "error",
    "unrecognized",
    "Error",
    "not a dvd",
];

/// Whether a log line says what went wrong (kept even when long output follows it).
pub fn is_notable(line: &str) -> bool {
    SIGNS.iter().any(|s| line.contains(s))
}

/// The lines of HandBrake's log that say what went wrong, for an error message a user can act on.
pub fn complaint(log_tail: &[String]) -> String {
    let strip = |l: &str| -> String {
        let l = l.trim();
        // "[16:18:28] text" → "text"
        match l.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((stamp, text)) if stamp.len() == 8 => text.to_owned(),
            _ => l.to_owned(),
        }
    };
    let mut picked: Vec<String> = log_tail
        .iter()
        .map(|l| strip(l))
        .filter(|l| is_notable(l))
        .collect();
    picked.dedup();
    let keep = picked.len().saturating_sub(3);
    let picked = picked.split_off(keep);
    if !picked.is_empty() {
        return picked.join("; ");
    }
    log_tail
        .iter()
        .rev()
        .map(|l| strip(l))
        .find(|l| !l.is_empty() && l != "HandBrake has exited.")
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        let p = parse_progress(
            "Encoding: task 1 of 1, 29.59 % (268.82 fps, avg 256.92 fps, ETA 00h00m09s)",
        )
        .unwrap();
        assert_eq!((p.task, p.tasks), (1, 1));
        assert!((p.percent - 29.59).abs() < 1e-9);
        assert_eq!(p.fps, Some(268.82));
        assert_eq!(p.eta, Some(Duration::from_secs(9)));
        let p = parse_progress("Encoding: task 2 of 2, 50.00 %").unwrap();
        assert!((p.fraction() - 0.75).abs() < 1e-9);
        assert_eq!(p.fps, None);
        for bad in [
            "",
            "Encoding: task x of 1, 1 %",
            "Muxing: this may take awhile...",
            "Encoding: task 1 of 1, 101.00 %",
        ] {
            assert!(parse_progress(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn scan_output_with_banners_around_the_json() {
        let out = "Version: {\n \"Name\": \"HandBrake\"\n}\nlibdvdread: Encrypted DVD support unavailable.\n\
            JSON Title Set: {\n \"MainFeature\": -1,\n \"TitleList\": [\n\
            {\"Index\": 1, \"Duration\": {\"Hours\":0,\"Minutes\":0,\"Seconds\":20,\"Ticks\":1800000},\
             \"ChapterList\": [{}, {}], \"AudioList\": [{}], \"Geometry\": {\"Width\":720,\"Height\":480}},\n\
            {\"Index\": 2, \"Duration\": {\"Hours\":0,\"Minutes\":0,\"Seconds\":35,\"Ticks\":3150000}}\n]}\n\
            HandBrake has exited.\n";
        let scan = parse_scan(out).unwrap();
        assert_eq!(scan.titles.len(), 2);
        assert_eq!(scan.titles[0].duration, Duration::from_secs(20));
        assert_eq!(scan.titles[0].chapters, 2);
        assert_eq!(scan.titles[0].size, (720, 480));
        assert_eq!(
            scan.main_feature().unwrap().index,
            2,
            "longest title when the disc names none"
        );
        assert!(parse_scan("No title found.\n").is_err());
        assert!(parse_scan("JSON Title Set: {\"TitleList\": 5}").is_err());
    }

    #[test]
    fn preset_lists_with_categories_and_imports() {
        let text = "[17:21:32] hb_init: starting libhb thread\nCannot load libnvidia-encode.so.1\n\
            General/\n    Very Fast 1080p30\n        Small H.264 video (up to 1080p30) and AAC stereo audio, in\n\
            \x20       an MP4 container.\n    Fast 480p30\n        Small.\nCLI Defaults/\n    CLI Default\n\
            Rafty Tiny\n    Small H.264 video (up to 480p30) and AAC stereo audio, in an\n    MP4 container.\n\
            HandBrake has exited.\n";
        assert_eq!(
            parse_preset_list(text),
            [
                "Very Fast 1080p30",
                "Fast 480p30",
                "CLI Default",
                "Rafty Tiny"
            ]
        );
        assert!(parse_preset_list("no list here\n").is_empty());
    }

    #[test]
    fn complaint_picks_the_error_lines() {
        let log: Vec<String> = [
            "[16:16:02] dvd: not a dvd - trying as a stream/file instead",
            "[16:16:02] hb_stream_open: open garbage.iso failed",
            "[16:16:02] scan: unrecognized file type",
            "[16:16:02] libhb: scan thread found 0 valid title(s)",
            "No title found.",
            "HandBrake has exited.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            complaint(&log),
            "hb_stream_open: open garbage.iso failed; scan: unrecognized file type; No title found."
        );
        assert_eq!(
            complaint(&["just this".to_owned(), "HandBrake has exited.".to_owned()]),
            "just this"
        );
    }
}
