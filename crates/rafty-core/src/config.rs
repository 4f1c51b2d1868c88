//! The configuration file: one TOML file shared by every Rafty program.
//!
//! Keys are kebab-case and unknown keys are rejected with their name and the file's path, so a typo never
//! silently falls back to a default. Every key has a default that works on a single machine; the
//! commented example in `config/rafty.toml` lists them all.
//!
//! Where the file comes from: `--config F`, else the environment variable [`ENV_CONFIG`], else
//! [`DEFAULT_CONFIG_PATH`] if it exists, else the built-in defaults. [`ENV_AMQP_URL`] overrides
//! `[broker] url` and `url-file`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::names::{DEFAULT_CONFIG_PATH, ENV_AMQP_URL};

/// Default broker URL: a RabbitMQ on this machine with its stock `guest` account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=15";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Name this machine reports in jobs, events and dead letters. Default: the host name.
    pub host: Option<String>,
    /// How to reach RabbitMQ.
    pub broker: BrokerConfig,
    /// The ripper and `raftyctl submit`.
    pub rip: RipConfig,
    /// The transcode worker.
    pub transcode: TranscodeConfig,
    /// `[notify]`: read and checked by `rafty-notify` (docs/notifications.md); the other programs
    /// accept it so that one file serves them all.
    pub notify: Option<toml::Table>,
}

/// `[broker]`: how to reach RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct BrokerConfig {
    /// AMQP URL, e.g. `amqp://user:password@host:5672/%2f?heartbeat=15`.
    pub url: String,
    /// A file holding the URL, so credentials stay out of the config. A relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` when systemd sets it (`LoadCredential=amqp-url` → `url-file = "amqp-url"`).
    /// Takes precedence over `url`.
    pub url_file: Option<PathBuf>,
    /// How long to wait for the broker to confirm a publish before calling it failed.
    #[serde(deserialize_with = "de_duration")]
    pub confirm_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: DEFAULT_AMQP_URL.to_owned(),
            url_file: None,
            confirm_timeout: Duration::from_secs(30),
        }
    }
}

/// `[rip]`: copying discs to images.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RipConfig {
    /// Directory of disc images; `rip` writes here and `raftyctl submit --copy` copies into it.
    pub iso_dir: PathBuf,
    /// Directory for the outbox (jobs waiting for the broker) and the per-drive locks.
    pub spool_dir: PathBuf,
    /// Drive read when `rip` is given no `--device`.
    pub device: PathBuf,
    /// When to eject the disc: `never`, `success`, `failure` or `always`.
    pub eject: EjectPolicy,
    /// What to do with a disc that was copied before: `skip` it, or `copy` it again under a new name.
    pub duplicate: DuplicatePolicy,
    /// Attempts per unreadable sector before it is given up as bad (for this run).
    pub read_retries: u32,
    /// Publish a job even when some sectors could not be read (the job says how many).
    pub accept_holes: bool,
    /// How often progress is logged and announced.
    #[serde(deserialize_with = "de_duration")]
    pub progress_interval: Duration,
    /// How long to wait for the broker before the job goes to the outbox instead.
    #[serde(deserialize_with = "de_duration")]
    pub broker_timeout: Duration,
    /// Names for discs whose label says too little: a TOML file of `"<fingerprint>" = "Name"` (rip
    /// logs each disc's fingerprint). The name replaces the label for the image and the job.
    pub names_file: Option<PathBuf>,
}

impl Default for RipConfig {
    fn default() -> Self {
        RipConfig {
            iso_dir: PathBuf::from("/var/lib/rafty/iso"),
            spool_dir: PathBuf::from("/var/lib/rafty/spool"),
            device: PathBuf::from("/dev/sr0"),
            eject: EjectPolicy::Success,
            duplicate: DuplicatePolicy::Skip,
            read_retries: 3,
            accept_holes: false,
            progress_interval: Duration::from_secs(10),
            broker_timeout: Duration::from_secs(15),
            names_file: None,
        }
    }
}

/// When `rip` ejects the disc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EjectPolicy {
    /// Never.
    Never,
    /// When the image is complete (or the disc was already copied).
    Success,
    /// When the copy failed, so the disc can be cleaned and tried again.
    Failure,
    /// Always.
    Always,
}

impl EjectPolicy {
    /// Whether to eject after a run that succeeded (`true`) or failed (`false`).
    pub fn ejects(self, succeeded: bool) -> bool {
        match self {
            EjectPolicy::Never => false,
            EjectPolicy::Success => succeeded,
            EjectPolicy::Failure => !succeeded,
            EjectPolicy::Always => true,
        }
    }
}

/// What `rip` does with a disc it copied before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    /// Recognise it, publish nothing, eject.
    Skip,
    /// Copy it again under a new name and publish a job.
    Copy,
}

/// `[transcode]`: what a worker does with a job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TranscodeConfig {
    /// Directory the videos are written to (the media library).
    pub output_dir: PathBuf,
    /// Directory for HandBrake's own temporary files (its `TMPDIR`).
    pub scratch_dir: PathBuf,
    /// Preset used when a job names none: a HandBrake built-in or one from `preset-files`.
    pub preset: String,
    /// HandBrake preset files (exported from the GUI) whose presets jobs may name.
    pub preset_files: Vec<PathBuf>,
    /// Path or name of HandBrakeCLI.
    pub handbrake: PathBuf,
    /// Directories a job's source may lie in (after `path-map`). Default: `[rip] iso-dir`.
    pub source_roots: Vec<PathBuf>,
    /// Producer path prefix → this worker's path prefix, for storage mounted at different places.
    pub path_map: BTreeMap<PathBuf, PathBuf>,
    /// The retry ladder: one delay per rung, e.g. `["30s", "5m", "30m", "2h"]`.
    #[serde(deserialize_with = "de_durations")]
    pub retry_delays: Vec<Duration>,
    /// Deliveries of one job before the broker parks it (a backstop against crash loops).
    pub delivery_limit: u32,
    /// Stop HandBrake when its progress has not moved for this long.
    #[serde(deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// After the first SIGTERM, how long the current encode may run before it is stopped and requeued.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// How much shorter than its title an output may be before it counts as truncated.
    #[serde(deserialize_with = "de_duration")]
    pub duration_tolerance: Duration,
    /// Titles shorter than this are not seen by the scan (HandBrake's `--min-duration`, seconds).
    pub min_title_secs: u64,
    /// Container of the outputs: `mkv` or `mp4`.
    pub container: Container,
    /// How often the worker announces itself (`rafty.transcode.worker.heartbeat`).
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat_interval: Duration,
    /// Where the worker serves Prometheus metrics (`/metrics`), e.g. `127.0.0.1:9108`; unset: none.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Preset for DVD jobs that name none (else `preset`).
    pub preset_dvd: Option<String>,
    /// Preset for Blu-ray jobs that name none (else `preset`).
    pub preset_bluray: Option<String>,
    /// Keep every audio track in these languages (ISO 639-2: `eng`, `fra`, `und`...); empty: the preset's.
    pub audio_languages: Vec<String>,
    /// Keep every subtitle track in these languages; empty: the preset's choice.
    pub subtitle_languages: Vec<String>,
    /// Show only forced captions of the kept subtitle tracks (the lines of a foreign-language scene).
    pub forced_subtitles_only: bool,
    /// Chapter markers in the output: `true`, `false`, or unset for the preset's choice.
    pub chapter_markers: Option<bool>,
    /// Where a disc's single output goes, relative to `output-dir`, without extension
    /// (fields `{name}`, `{label}`, `{title}`, `{index}`, `{count}`; `/` makes directories).
    pub movie_name: String,
    /// Where each output of a disc split into titles goes (same fields).
    pub title_name: String,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        TranscodeConfig {
            output_dir: PathBuf::from("/var/lib/rafty/media"),
            scratch_dir: PathBuf::from("/var/lib/rafty/scratch"),
            preset: "Fast 1080p30".to_owned(),
            preset_files: Vec::new(),
            handbrake: PathBuf::from("HandBrakeCLI"),
            source_roots: Vec::new(),
            path_map: BTreeMap::new(),
            retry_delays: ["30s", "5m", "30m", "2h"]
                .iter()
                .map(|s| parse_duration(s).expect("valid default"))
                .collect(),
            delivery_limit: 10,
            stall_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(600),
            duration_tolerance: Duration::from_secs(2),
            min_title_secs: 1,
            container: Container::Mkv,
            heartbeat_interval: Duration::from_secs(30),
            metrics_address: None,
            preset_dvd: None,
            preset_bluray: None,
            audio_languages: Vec::new(),
            subtitle_languages: Vec::new(),
            forced_subtitles_only: false,
            chapter_markers: Some(true),
            movie_name: "{name}".to_owned(),
            title_name: "{name} - t{title}".to_owned(),
        }
    }
}

/// Output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Container {
    /// Matroska (`.mkv`, HandBrake's `av_mkv`).
    Mkv,
    /// MPEG-4 (`.mp4`, HandBrake's `av_mp4`).
    Mp4,
}

impl Container {
    /// File extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mkv => "mkv",
            Container::Mp4 => "mp4",
        }
    }
    /// HandBrake's `--format` name.
    pub fn handbrake_format(self) -> &'static str {
        match self {
            Container::Mkv => "av_mkv",
            Container::Mp4 => "av_mp4",
        }
    }
}

/// A configuration that could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and shows the line.
        message: String,
    },
    /// `[broker] url-file` could not be read.
    #[error("cannot read the broker URL from {path} ([broker] url-file in {config}): {source}")]
    UrlFile {
        /// The URL file.
        path: PathBuf,
        /// The config file naming it.
        config: String,
        /// Why.
        source: std::io::Error,
    },
    /// A value that parses but cannot work.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file it was read from; `None` for the built-in defaults.
    pub path: Option<PathBuf>,
}

impl Loaded {
    /// How to name the source in messages.
    pub fn source_name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "(built-in defaults)".to_owned(),
        }
    }

    /// The broker URL: [`ENV_AMQP_URL`], else `url-file`, else `url`.
    pub fn amqp_url(&self) -> Result<String, ConfigError> {
        if let Ok(url) = std::env::var(ENV_AMQP_URL)
            && !url.trim().is_empty()
        {
            return Ok(url.trim().to_owned());
        }
        if let Some(file) = &self.config.broker.url_file {
            // A relative url-file names a systemd credential (LoadCredential=), found in the unit's
            // own credentials directory, so one config serves every unit.
            let file = match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if file.is_relative() => PathBuf::from(dir).join(file),
                _ => file.clone(),
            };
            return std::fs::read_to_string(&file)
                .map(|s| s.trim().to_owned())
                .map_err(|source| ConfigError::UrlFile {
                    path: file,
                    config: self.source_name(),
                    source,
                });
        }
        Ok(self.config.broker.url.clone())
    }

    /// This machine's name as reported to others.
    pub fn host(&self) -> String {
        self.config.host.clone().unwrap_or_else(hostname)
    }

    /// The source roots in effect: `[transcode] source-roots`, or `[rip] iso-dir` when none are given.
    pub fn source_roots(&self) -> Vec<PathBuf> {
        if self.config.transcode.source_roots.is_empty() {
            vec![self.config.rip.iso_dir.clone()]
        } else {
            self.config.transcode.source_roots.clone()
        }
    }
}

impl Config {
    /// Load the configuration: `explicit` (from `--config` or [`crate::names::ENV_CONFIG`]) must exist;
    /// otherwise [`DEFAULT_CONFIG_PATH`] is read if present, else the built-in defaults are used.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !default.exists() {
                    return Ok(Loaded {
                        config: Config::default(),
                        path: None,
                    });
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
        let loaded = Loaded {
            config,
            path: Some(path),
        };
        loaded.check()?;
        Ok(loaded)
    }

    /// Parse configuration text; the error is toml's message (it names the key and the line).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

impl Loaded {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: self.source_name(),
            message,
        };
        let t = &self.config.transcode;
        for (key, value) in [
            (
                "[broker] confirm-timeout",
                self.config.broker.confirm_timeout,
            ),
            ("[rip] broker-timeout", self.config.rip.broker_timeout),
            ("[transcode] stall-timeout", t.stall_timeout),
            ("[transcode] heartbeat-interval", t.heartbeat_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("{key} must be longer than zero")));
            }
        }
        let r = &self.config.rip;
        for (key, path) in [
            ("[rip] iso-dir", &r.iso_dir),
            ("[rip] spool-dir", &r.spool_dir),
            ("[transcode] output-dir", &t.output_dir),
            ("[transcode] scratch-dir", &t.scratch_dir),
        ]
        .into_iter()
        .chain(
            t.source_roots
                .iter()
                .map(|p| ("[transcode] source-roots", p)),
        ) {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "{key}: {} must be an absolute path (services do not run in your directory)",
                    path.display()
                )));
            }
        }
        for lang in t.audio_languages.iter().chain(&t.subtitle_languages) {
            if lang.len() != 3 || !lang.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(invalid(format!(
                    "[transcode] audio-languages / subtitle-languages: {lang:?} is not an ISO 639-2 code such as \"eng\""
                )));
            }
        }
        if t.retry_delays.iter().any(|d| d.is_zero()) {
            return Err(invalid(
                "[transcode] retry-delays: a delay of zero would retry in a tight loop".into(),
            ));
        }
        if t.delivery_limit == 0 {
            return Err(invalid(
                "[transcode] delivery-limit must be at least 1".into(),
            ));
        }
        for (from, to) in &t.path_map {
            if !from.is_absolute() || !to.is_absolute() {
                return Err(invalid(format!(
                    "[transcode] path-map: {} = {} must map an absolute path to an absolute path",
                    from.display(),
                    to.display()
                )));
            }
        }
        Ok(())
    }
}

/// The host name of this machine (gethostname(2), which works under systemd's `ProcSubset=pid`),
/// or `localhost` if it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Parse a duration such as `30s`, `5m`, `2h`, `1500ms` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration like 30s, 5m, 2h or 1500ms"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total += part;
    }
    Ok(total)
}

/// Format a duration the way [`parse_duration`] reads it, in its largest exact unit (`30s`, `5m`, `2h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s != 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s != 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

struct DurationVisitor;
impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"5m\" or \"2h\"")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        for (s, d) in [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1500ms", Duration::from_millis(1500)),
            ("1h30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for bad in ["", "s", "5", "5x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_key_of_the_example_is_known() {
        let example = include_str!("../../../config/rafty.toml");
        let config = Config::parse(example).unwrap();
        assert_eq!(config.transcode.retry_delays.len(), 4);
    }

    #[test]
    fn the_container_image_config_is_valid() {
        let config = Config::parse(include_str!("../../../docker/rafty.toml")).unwrap();
        assert_eq!(config.transcode.output_dir, PathBuf::from("/media"));
        assert_eq!(config.transcode.source_roots, vec![PathBuf::from("/iso")]);
    }

    #[test]
    fn the_notifier_section_is_accepted_and_left_to_it() {
        let config =
            Config::parse("[notify]\nntfy = [\"https://ntfy.sh/x\"]\nanything = 1\n").unwrap();
        assert!(config.notify.unwrap().contains_key("ntfy"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[transcode]\noutput-dri = \"/x\"\n").unwrap_err();
        assert!(err.contains("output-dri"), "{err}");
        let err = Config::parse("[transcode]\nretry-delays = [\"5 parsecs\"]\n").unwrap_err();
        assert!(err.contains("parsecs"), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("rafty-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[broker]\nurl = 5\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("url"),
            "{err}"
        );
        let missing = dir.join("missing.toml");
        let err = Config::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
