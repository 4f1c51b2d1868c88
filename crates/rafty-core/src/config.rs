//! The configuration file: one TOML file shared by every Rafty program.
//!
//! Keys are kebab-case and unknown keys are rejected with their name and the file's path, so a typo never
//! silently falls back to a default. Every key has a default that works on a single machine; the
//! commented example in `config/rafty.toml` lists them all.
//!
//! Where the file comes from: `--config F`, else the environment variable [`ENV_CONFIG`], else
//! [`DEFAULT_CONFIG_PATH`] if it exists, else the built-in defaults. [`ENV_AMQP_URL`] overrides
//! `[broker] url`, `urls` and `url-file`.

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
    /// `rafty-store`, and the workers and producers that use it (docs/store.md).
    pub store: StoreConfig,
    /// `rafty-replicate`, `raftyctl audit` and `raftyctl restore-test` (docs/replicate.md).
    pub replicate: ReplicateConfig,
    /// `[notify]`: read and checked by `rafty-notify` (docs/notifications.md); the other programs
    /// accept it so that one file serves them all.
    pub notify: Option<toml::Table>,
}

/// `[broker]`: how to reach RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct BrokerConfig {
    /// AMQP URL of a one-node broker, e.g. `amqp://user:password@host:5672/%2f?heartbeat=15`: the
    /// shorthand for `urls = [url]`. Default [`DEFAULT_AMQP_URL`]. Setting both `url` and `urls` is an
    /// error.
    pub url: Option<String>,
    /// AMQP URLs of every node of a RabbitMQ cluster (docs/cluster.md). Each program starts at a node
    /// chosen from its host name and pid (so a fleet spreads over the nodes), and moves to the next one
    /// when a node cannot be reached or is lost.
    pub urls: Vec<String>,
    /// A file holding the URL, or several whitespace-separated URLs (one per line, say), so credentials
    /// stay out of the config. A relative path is looked up in `$CREDENTIALS_DIRECTORY` when systemd
    /// sets it (`LoadCredential=amqp-url` → `url-file = "amqp-url"`). Takes precedence over `url` and
    /// `urls`.
    pub url_file: Option<PathBuf>,
    /// How long to wait for the broker to confirm a publish before calling it failed.
    #[serde(deserialize_with = "de_duration")]
    pub confirm_timeout: Duration,
    /// The RabbitMQ management API (`http://user:password@mq1:15672`), read by `raftyctl setup` and
    /// `status` only, to show each queue's members and warn when a queue has fewer replicas than the
    /// cluster has nodes (docs/cluster.md). Unset: members are not shown.
    pub management_url: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            urls: Vec::new(),
            url_file: None,
            confirm_timeout: Duration::from_secs(30),
            management_url: None,
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
    /// Split each title by chapters across idle workers (`"chapters"`) or not (`"none"`), for jobs
    /// whose `encode.split` says neither (docs/split.md).
    pub split: crate::job::Split,
    /// With `split = "chapters"` from here (not from the job), titles shorter than this are encoded whole.
    #[serde(deserialize_with = "de_duration")]
    pub split_min_duration: Duration,
    /// The most video pieces one title is cut into (fewer when fewer workers are live or the
    /// title has fewer chapters).
    pub split_max_pieces: u32,
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
            split: crate::job::Split::None,
            split_min_duration: Duration::from_secs(20 * 60),
            split_max_pieces: 8,
        }
    }
}

/// `[store]`: the image and media store served by `rafty-store` on the machine that holds them, for
/// workers that share no file system with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StoreConfig {
    /// Where `rafty-store` listens, e.g. `0.0.0.0:8766`.
    pub listen: std::net::SocketAddr,
    /// The store's URL as workers reach it, e.g. `https://nas.example:8766`. Set on a producer, jobs
    /// carry `source.url` (and `source.sha256`); set on a worker, sources it cannot read locally are
    /// fetched from here and their outputs sent back. Unset: no store.
    pub url: Option<String>,
    /// Bearer tokens, one per line. On the store: every token it accepts (delete a line to revoke one
    /// machine's); on a worker: the first line is its own. A relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` when systemd sets it (`LoadCredential=store-token`).
    pub token_file: Option<PathBuf>,
    /// PEM file of CA certificates the store's certificate must chain to (an `https` URL); unset: the
    /// system's certificate authorities.
    pub ca_file: Option<PathBuf>,
    /// The store's certificate chain (PEM); with `tls-key`, `rafty-store` serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// The store's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// A transfer that moves no byte for this long is cut and resumed.
    #[serde(deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// How long a worker keeps resuming one transfer before it gives the job to the retry ladder.
    #[serde(deserialize_with = "de_duration")]
    pub resume_for: Duration,
}

/// `[replicate]`: the copies of the library kept elsewhere, and their ledger (docs/replicate.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ReplicateConfig {
    /// The ledger: every object's size and SHA-256 and when each copy was last verified. It is
    /// copied to every destination too, so a lost disk cannot take it alone.
    pub ledger: PathBuf,
    /// A destination away this long is reported (a `rafty.replicate.away` event and a warning).
    #[serde(deserialize_with = "de_duration")]
    pub away_after: Duration,
    /// How often a destination that is away is tried again.
    #[serde(deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// A copy not verified for this long is `STALE` in `raftyctl audit`.
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    /// Where copies go: a directory (`file:///mnt/usb/rafty`) or an S3 bucket (`s3://bucket/prefix`).
    pub destinations: Vec<Destination>,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            ledger: PathBuf::from("/var/lib/rafty/ledger.json"),
            away_after: Duration::from_secs(600),
            probe_interval: Duration::from_secs(5),
            max_age: Duration::from_secs(35 * 24 * 3600),
            destinations: Vec::new(),
        }
    }
}

/// One place copies go (`[[replicate.destinations]]` or an inline table in `destinations`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Destination {
    /// Its name in logs, queues (`rafty.replicate.NAME`) and `raftyctl audit --dest`.
    pub name: String,
    /// `file:///absolute/dir` (the directory must exist: a missing one is a disk not mounted) or
    /// `s3://bucket/optional/prefix`.
    pub url: String,
    /// S3: the endpoint of an S3-compatible server (`http://nas2:9000`); unset: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3: the region.
    #[serde(default)]
    pub region: Option<String>,
    /// S3: the access key id (unset: `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3: a file holding the secret access key (unset: `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// S3: allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8766)),
            url: None,
            token_file: None,
            ca_file: None,
            tls_cert: None,
            tls_key: None,
            stall_timeout: Duration::from_secs(30),
            resume_for: Duration::from_secs(600),
        }
    }
}

/// Output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
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

    /// The broker's node URLs, in the order given: [`ENV_AMQP_URL`] (whitespace-separated), else
    /// `url-file` (whitespace-separated), else `urls`, else `url`, else [`DEFAULT_AMQP_URL`]. Each is
    /// checked ([`check_amqp_url`]); an error names the URL with its password masked.
    pub fn amqp_urls(&self) -> Result<Vec<String>, ConfigError> {
        let invalid = |from: &str, message: String| ConfigError::Invalid {
            path: format!("{} ({from})", self.source_name()),
            message,
        };
        let split =
            |text: &str| -> Vec<String> { text.split_whitespace().map(str::to_owned).collect() };
        let b = &self.config.broker;
        if b.url.is_some() && !b.urls.is_empty() {
            return Err(invalid(
                "[broker]",
                "url and urls are both set: keep urls (the list of every node), or url for one node"
                    .into(),
            ));
        }
        let (from, urls) = if let Ok(text) = std::env::var(ENV_AMQP_URL)
            && !text.trim().is_empty()
        {
            (format!("${ENV_AMQP_URL}"), split(&text))
        } else if let Some(file) = &self.config.broker.url_file {
            // A relative url-file names a systemd credential (LoadCredential=), found in the unit's
            // own credentials directory, so one config serves every unit.
            let file = match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) if file.is_relative() => PathBuf::from(dir).join(file),
                _ => file.clone(),
            };
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::UrlFile {
                path: file.clone(),
                config: self.source_name(),
                source,
            })?;
            let urls = split(&text);
            if urls.is_empty() {
                return Err(invalid(
                    "[broker] url-file",
                    format!("{} holds no broker URL", file.display()),
                ));
            }
            (format!("[broker] url-file {}", file.display()), urls)
        } else if !self.config.broker.urls.is_empty() {
            ("[broker] urls".to_owned(), self.config.broker.urls.clone())
        } else {
            let url = self
                .config
                .broker
                .url
                .as_deref()
                .unwrap_or(DEFAULT_AMQP_URL);
            ("[broker] url".to_owned(), vec![url.trim().to_owned()])
        };
        for url in &urls {
            check_amqp_url(url).map_err(|message| invalid(&from, message))?;
        }
        Ok(urls)
    }

    /// The `[store] token-file` path in effect (a relative path names a systemd credential).
    pub fn store_token_file(&self) -> Option<PathBuf> {
        let file = self.config.store.token_file.as_ref()?;
        Some(match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if file.is_relative() => PathBuf::from(dir).join(file),
            _ => file.clone(),
        })
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
        let b = &self.config.broker;
        if b.url.is_some() && !b.urls.is_empty() {
            return Err(invalid(
                "[broker] url and urls are both set: keep urls (the list of every node), or url for one node"
                    .into(),
            ));
        }
        if let Some(url) = &b.url {
            check_amqp_url(url).map_err(|m| invalid(format!("[broker] url: {m}")))?;
        }
        for url in &b.urls {
            check_amqp_url(url).map_err(|m| invalid(format!("[broker] urls: {m}")))?;
        }
        let t = &self.config.transcode;
        for (key, value) in [
            (
                "[broker] confirm-timeout",
                self.config.broker.confirm_timeout,
            ),
            ("[rip] broker-timeout", self.config.rip.broker_timeout),
            ("[transcode] stall-timeout", t.stall_timeout),
            ("[transcode] heartbeat-interval", t.heartbeat_interval),
            ("[store] stall-timeout", self.config.store.stall_timeout),
            (
                "[replicate] probe-interval",
                self.config.replicate.probe_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("{key} must be longer than zero")));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &self.config.replicate.destinations {
            let ok_name = !d.name.is_empty()
                && d.name != "library"
                && d.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok_name {
                return Err(invalid(format!(
                    "[replicate] destinations: name {:?} must be letters, digits, '-' or '_' (and not \"library\", which names the library itself)",
                    d.name
                )));
            }
            if !names.insert(d.name.as_str()) {
                return Err(invalid(format!(
                    "[replicate] destinations: two destinations are named {:?}",
                    d.name
                )));
            }
            let file = d.url.strip_prefix("file://");
            let s3 = d.url.strip_prefix("s3://");
            match (file, s3) {
                (Some(path), _) if path.starts_with('/') => {}
                (Some(_), _) => {
                    return Err(invalid(format!(
                        "[replicate] destination {}: {} must be an absolute path, e.g. file:///mnt/usb/rafty",
                        d.name, d.url
                    )));
                }
                (_, Some(rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
                _ => {
                    return Err(invalid(format!(
                        "[replicate] destination {}: {} is neither file:///dir nor s3://bucket/prefix",
                        d.name, d.url
                    )));
                }
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
        if !(2..=99).contains(&t.split_max_pieces) {
            return Err(invalid(format!(
                "[transcode] split-max-pieces = {} must be 2 to 99 (set split = \"none\" to encode titles whole)",
                t.split_max_pieces
            )));
        }
        let s = &self.config.store;
        if let Some(url) = &s.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "[store] url = {url:?} must be an http:// or https:// URL, e.g. \"https://nas:8766\""
            )));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(invalid(
                "[store] tls-cert and tls-key go together: set both to serve HTTPS, or neither"
                    .into(),
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

/// Check that `url` can be an AMQP URL (`amqp://` or `amqps://`, a host); the message names it with its
/// password masked ([`mask_url`]) and says what to write.
pub fn check_amqp_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{}: {why}: write amqp://user:password@host:5672/vhost (or amqps://…:5671/…)",
            mask_url(url)
        ))
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("not an AMQP URL");
    };
    if scheme != "amqp" && scheme != "amqps" {
        return bad("the scheme must be amqp or amqps");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return bad("no host");
    }
    Ok(())
}

/// A URL component (a vhost, a user, a password, a query value) with its `%XX` escapes decoded; an
/// escape that is not two hex digits stays as written, and bytes that are not UTF-8 become U+FFFD.
pub fn url_decode(component: &str) -> String {
    percent_encoding::percent_decode_str(component)
        .decode_utf8_lossy()
        .into_owned()
}

/// The URL with its password replaced by `***`, for logs and messages. The password ends at the last
/// `@`, so one holding `/`, `?` or `#` unencoded is masked too; a string that is not a URL but holds
/// an `@` is not shown at all.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "(a broker URL that does not parse; not shown because it may hold a password)"
                .to_owned()
        } else {
            url.to_owned()
        };
    };
    match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{host}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
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

    #[test]
    fn a_cluster_is_a_list_of_urls_and_url_with_urls_is_refused() {
        let dir = tempdir("urls");
        let file = dir.join("cluster.toml");
        std::fs::write(
            &file,
            "[broker]\nurls = [\"amqp://u:p@mq1:5672/%2f\", \"amqp://u:p@mq2:5672/%2f\", \"amqp://u:p@mq3:5672/%2f\"]\n",
        )
        .unwrap();
        let loaded = Config::load(Some(&file)).unwrap();
        if std::env::var_os(ENV_AMQP_URL).is_none() {
            assert_eq!(loaded.amqp_urls().unwrap().len(), 3);
        }
        std::fs::write(
            &file,
            "[broker]\nurl = \"amqp://u:p@mq1/%2f\"\nurls = [\"amqp://u:p@mq2/%2f\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("url and urls"),
            "{err}"
        );
        std::fs::write(
            &file,
            "[broker]\nurls = [\"amqp://u:p@mq1/%2f\", \"http://u:secret@mq2/\"]\n",
        )
        .unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("http://u:***@mq2/")
                && !err.contains("secret"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_url_file_may_hold_several_whitespace_separated_urls() {
        let dir = tempdir("url-file");
        let urls = dir.join("amqp-urls");
        std::fs::write(
            &urls,
            "amqp://u:p@mq1:5672/%2f\n  amqp://u:p@mq2:5672/%2f\tamqp://u:p@mq3:5672/%2f\n",
        )
        .unwrap();
        let file = dir.join("rafty.toml");
        std::fs::write(
            &file,
            format!("[broker]\nurl-file = \"{}\"\n", urls.display()),
        )
        .unwrap();
        let loaded = Config::load(Some(&file)).unwrap();
        if std::env::var_os(ENV_AMQP_URL).is_none() {
            assert_eq!(
                loaded.amqp_urls().unwrap(),
                [
                    "amqp://u:p@mq1:5672/%2f",
                    "amqp://u:p@mq2:5672/%2f",
                    "amqp://u:p@mq3:5672/%2f"
                ]
            );
            std::fs::write(&urls, "amqp://u:p@mq1/%2f mq2:5672\n").unwrap();
            let err = loaded.amqp_urls().unwrap_err().to_string();
            assert!(
                err.contains("url-file") && err.contains("mq2:5672"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=15").is_ok());
        assert!(check_amqp_url("amqps://h/v").is_ok());
        assert!(check_amqp_url("amqp://u:p@:5672/").is_err());
        let err = check_amqp_url("mq1:5672").unwrap_err();
        assert!(err.contains("mq1:5672") && err.contains("amqp://"), "{err}");
    }

    fn tempdir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rafty-config-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
