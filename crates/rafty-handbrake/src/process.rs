//! Running HandBrakeCLI.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::parse::{Progress, Scan, complaint, parse_progress, parse_scan};

/// Lines of HandBrake's stderr kept for the error message.
const LOG_TAIL_LINES: usize = 80;
/// How long HandBrake gets to exit after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a HandBrake run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// HandBrakeCLI could not be started.
    #[error(
        "cannot start {program}: {source}; install HandBrakeCLI (apt-get install handbrake-cli) or set [transcode] handbrake"
    )]
    Start {
        /// The program that was run.
        program: PathBuf,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// HandBrakeCLI exited with a non-zero status.
    #[error("HandBrakeCLI exited with status {code}: {message}")]
    Exit {
        /// The exit status.
        code: i32,
        /// HandBrake's complaint, from its log.
        message: String,
    },
    /// HandBrakeCLI was killed by a signal the caller did not ask for.
    #[error("HandBrakeCLI was killed by signal {signal}: {message}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The end of its log.
        message: String,
    },
    /// No progress for too long; HandBrake was stopped.
    #[error("no progress for {} s; HandBrakeCLI was stopped (last log: {message})", after.as_secs())]
    Stalled {
        /// How long it went without progress.
        after: Duration,
        /// The end of its log.
        message: String,
    },
    /// The caller cancelled the run; HandBrake was stopped.
    #[error("HandBrakeCLI was stopped on request")]
    Cancelled,
    /// HandBrake succeeded but its scan output could not be read.
    #[error("cannot read HandBrake's scan of {input}: {message}")]
    Scan {
        /// The scanned file.
        input: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Reading HandBrake's output failed.
    #[error("reading HandBrakeCLI's output: {0}")]
    Io(#[from] std::io::Error),
}

/// One encode: which title of which source, to which file, with which preset.
#[derive(Debug, Clone)]
pub struct EncodeRequest<'a> {
    /// The source (an ISO, a device or a video file).
    pub input: &'a Path,
    /// Title number, from the scan.
    pub title: u32,
    /// The file to write (the caller's temporary name).
    pub output: &'a Path,
    /// Preset name (`-Z`).
    pub preset: &'a str,
    /// Container format (`-f`), e.g. `av_mkv`.
    pub format: &'a str,
    /// Track choices, after the preset (they override it).
    pub tracks: &'a Tracks,
    /// More arguments, after the track choices (a piece's `--chapters 1-4 -a none`).
    pub extra: &'a [OsString],
}

/// Track choices passed to every encode after the preset (they override it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracks {
    /// Keep every audio track in these languages (ISO 639-2, e.g. `eng`); empty: the preset's choice.
    pub audio_languages: Vec<String>,
    /// Keep every subtitle track in these languages; empty: the preset's choice.
    pub subtitle_languages: Vec<String>,
    /// Show only the forced captions of the chosen subtitle tracks.
    pub forced_subtitles_only: bool,
    /// Chapter markers on (`true`) or off (`false`); `None`: the preset's choice.
    pub chapter_markers: Option<bool>,
}

impl Tracks {
    /// The HandBrakeCLI arguments for these choices.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if !self.audio_languages.is_empty() {
            args.extend([
                "--audio-lang-list".into(),
                self.audio_languages.join(",").into(),
                "--all-audio".into(),
            ]);
        }
        if !self.subtitle_languages.is_empty() {
            args.extend([
                "--subtitle-lang-list".into(),
                self.subtitle_languages.join(",").into(),
                "--all-subtitles".into(),
            ]);
            if self.forced_subtitles_only {
                args.push("--subtitle-forced".into());
            }
        }
        match self.chapter_markers {
            Some(true) => args.push("--markers".into()),
            Some(false) => args.push("--no-markers".into()),
            None => {}
        }
        args
    }
}

/// A HandBrakeCLI installation and how to call it.
#[derive(Debug, Clone)]
pub struct HandBrake {
    program: PathBuf,
    preset_files: Vec<PathBuf>,
    tmp_dir: Option<PathBuf>,
    min_title_secs: u64,
}

impl HandBrake {
    /// A HandBrake at `program`, with extra preset files and a directory for its temporary files.
    pub fn new(
        program: PathBuf,
        preset_files: Vec<PathBuf>,
        tmp_dir: Option<PathBuf>,
        min_title_secs: u64,
    ) -> Self {
        HandBrake {
            program,
            preset_files,
            tmp_dir,
            min_title_secs,
        }
    }

    /// The program that is run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C goes to the worker, which decides.
            .process_group(0);
        if let Some(dir) = &self.tmp_dir {
            cmd.env("TMPDIR", dir);
        }
        set_parent_death_signal(&mut cmd);
        cmd
    }

    fn start(&self, cmd: &mut Command) -> Result<Child, Error> {
        cmd.spawn().map_err(|source| Error::Start {
            program: self.program.clone(),
            source,
        })
    }

    /// `HandBrakeCLI --version`, e.g. `HandBrake 1.6.1`.
    pub async fn version(&self) -> Result<String, Error> {
        let mut cmd = self.command();
        cmd.arg("--version");
        let child = self.start(&mut cmd)?;
        let out = child.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find(|l| l.starts_with("HandBrake")) {
            Some(line) if out.status.success() => Ok(line.trim().to_owned()),
            _ => Err(Error::Exit {
                code: out.status.code().unwrap_or(-1),
                message: format!("{} --version printed no version", self.program.display()),
            }),
        }
    }

    /// The presets this HandBrake knows: its built-ins and those of the preset files (`-z`).
    pub async fn presets(&self) -> Result<Vec<String>, Error> {
        let mut cmd = self.command();
        if !self.preset_files.is_empty() {
            cmd.arg("--preset-import-file").args(&self.preset_files);
        }
        cmd.arg("-z");
        let child = self.start(&mut cmd)?;
        let out = child.wait_with_output().await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let log: Vec<String> = text.lines().map(str::to_owned).collect();
        check_status(out.status, &log)?;
        Ok(crate::parse::parse_preset_list(&text))
    }

    /// Scan every title of `input` (`--scan --json -t 0`).
    pub async fn scan(&self, input: &Path, timeout: Duration) -> Result<Scan, Error> {
        let mut cmd = self.command();
        cmd.arg("-i")
            .arg(input)
            // No previews: they cost decode time and the worker never shows them.
            .args([
                "--scan",
                "--json",
                "-t",
                "0",
                "--previews",
                "1:0",
                "--min-duration",
            ])
            .arg(self.min_title_secs.to_string());
        let child = self.start(&mut cmd)?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => out?,
            Err(_) => {
                return Err(Error::Stalled {
                    after: timeout,
                    message: format!("scan of {} did not finish", input.display()),
                });
            }
        };
        let log: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_owned)
            .collect();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // "No title found." goes to stdout or stderr depending on the version.
        let mut all = log;
        all.extend(
            stdout
                .lines()
                .filter(|l| !l.starts_with(' '))
                .map(str::to_owned),
        );
        check_status(out.status, &all)?;
        parse_scan(&stdout).map_err(|message| Error::Scan {
            input: input.to_path_buf(),
            message,
        })
    }

    /// The argv of an encode (without the program).
    pub fn encode_args(&self, req: &EncodeRequest<'_>) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if !self.preset_files.is_empty() {
            // --preset-import-file swallows the arguments that follow it up to the next flag.
            args.push("--preset-import-file".into());
            args.extend(self.preset_files.iter().map(|p| p.clone().into_os_string()));
        }
        args.extend(["-Z".into(), req.preset.into()]);
        args.extend(req.tracks.args());
        args.extend(req.extra.iter().cloned());
        args.extend(["-i".into(), req.input.as_os_str().to_owned()]);
        args.extend(["-t".into(), req.title.to_string().into()]);
        args.extend(["--min-duration".into(), "0".into()]);
        args.extend(["-o".into(), req.output.as_os_str().to_owned()]);
        args.extend(["-f".into(), req.format.into()]);
        args
    }

    /// Run one encode. `on_progress` sees every progress report; the run is stopped (SIGINT, then
    /// SIGKILL after a grace period) when `cancel` completes or when neither the progress nor the log
    /// moves for `stall_timeout`. The output file is the caller's to delete on error.
    pub async fn encode<F>(
        &self,
        req: &EncodeRequest<'_>,
        stall_timeout: Duration,
        cancel: impl Future<Output = ()>,
        mut on_progress: F,
    ) -> Result<(), Error>
    where
        F: FnMut(&Progress),
    {
        let mut cmd = self.command();
        cmd.args(self.encode_args(req));
        tracing::debug!(program = %self.program.display(), args = ?self.encode_args(req), "starting HandBrakeCLI");
        let mut child = self.start(&mut cmd)?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let activity = Arc::new(Mutex::new(Instant::now()));
        // Before the first progress line (HandBrake's own scan), log lines count as life; after it,
        // only progress does: a HandBrake looping on decode errors without moving is stalled.
        let progressing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        let notable = Arc::new(Mutex::new(Vec::new()));
        let drain = tokio::spawn(drain_stderr(
            stderr,
            Arc::clone(&tail),
            Arc::clone(&notable),
            Arc::clone(&activity),
            Arc::clone(&progressing),
        ));

        let mut cancel = std::pin::pin!(cancel);
        let mut buf = vec![0u8; 4096];
        let mut pending = String::new();
        let mut last_percent = -1.0;
        let mut eof = false;
        enum End {
            Exited(std::process::ExitStatus),
            Stalled,
            Cancelled,
        }
        let end = loop {
            let deadline = *activity.lock().expect("not poisoned") + stall_timeout;
            tokio::select! {
                read = stdout.read(&mut buf), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                        while let Some(cut) = pending.find(['\r', '\n']) {
                            let line: String = pending.drain(..=cut).collect();
                            if let Some(p) = parse_progress(&line) {
                                let overall = p.fraction();
                                if overall > last_percent {
                                    last_percent = overall;
                                    *activity.lock().expect("not poisoned") = Instant::now();
                                    progressing.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                                on_progress(&p);
                            }
                        }
                    }
                },
                status = child.wait(), if eof => break End::Exited(status?),
                _ = tokio::time::sleep_until(deadline) => {
                    if *activity.lock().expect("not poisoned") + stall_timeout <= Instant::now() {
                        break End::Stalled;
                    }
                }
                _ = &mut cancel => break End::Cancelled,
            }
        };
        if !matches!(end, End::Exited(_)) {
            stop(&mut child).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        let log = collect_log(&tail, &notable);
        match end {
            End::Exited(status) => check_status(status, &log),
            End::Stalled => Err(Error::Stalled {
                after: stall_timeout,
                message: complaint(&log),
            }),
            End::Cancelled => Err(Error::Cancelled),
        }
    }
}

fn check_status(status: std::process::ExitStatus, log: &[String]) -> Result<(), Error> {
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(Error::Exit {
            code,
            message: complaint(log),
        }),
        (None, Some(signal)) => Err(Error::Signal {
            signal,
            message: complaint(log),
        }),
        (None, None) => Err(Error::Exit {
            code: -1,
            message: complaint(log),
        }),
    }
}

/// Lines that said what went wrong, kept from anywhere in the log (HandBrake may print hundreds of
/// lines after the one that matters, such as its whole preset list after `Invalid preset X`).
const NOTABLE_LINES: usize = 20;

/// The notable lines that fell out of the tail, then the tail: what [`complaint`] reads.
fn collect_log(tail: &Mutex<VecDeque<String>>, notable: &Mutex<Vec<String>>) -> Vec<String> {
    let tail: Vec<String> = tail.lock().expect("not poisoned").iter().cloned().collect();
    let mut log: Vec<String> = notable
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|l| !tail.contains(l))
        .cloned()
        .collect();
    log.extend(tail);
    log
}

async fn drain_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    notable: Arc<Mutex<Vec<String>>>,
    activity: Arc<Mutex<Instant>>,
    progressing: Arc<std::sync::atomic::AtomicBool>,
) {
    // Bytes, not `lines()`: HandBrake logs names from the disc and the file system as they are, and a
    // line that is not UTF-8 must not end the drain (HandBrake would then die of SIGPIPE).
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if !progressing.load(std::sync::atomic::Ordering::Relaxed) {
            *activity.lock().expect("not poisoned") = Instant::now();
        }
        tracing::trace!(target: "handbrake", "{line}");
        if crate::parse::is_notable(&line) {
            let mut notable = notable.lock().expect("not poisoned");
            if notable.len() < NOTABLE_LINES {
                notable.push(line.clone());
            }
        }
        let mut tail = tail.lock().expect("not poisoned");
        if tail.len() == LOG_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Ask HandBrake to stop (SIGINT lets it close its files), then kill it if it does not.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// HandBrake must not outlive its worker: if the worker is killed, the kernel sends HandBrake SIGKILL.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_choices_follow_the_preset_on_the_command_line() {
        let hb = HandBrake::new("HandBrakeCLI".into(), vec![], None, 1);
        let tracks = Tracks {
            audio_languages: vec!["eng".into(), "fra".into()],
            subtitle_languages: vec!["eng".into()],
            forced_subtitles_only: true,
            chapter_markers: Some(true),
        };
        let args = hb.encode_args(&EncodeRequest {
            input: Path::new("/iso/a.iso"),
            title: 1,
            output: Path::new("/m/.a.part"),
            preset: "P",
            format: "av_mkv",
            tracks: &tracks,
            extra: &[],
        });
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let z = args.iter().position(|a| a == "-Z").unwrap();
        assert_eq!(
            args[z..z + 10],
            [
                "-Z",
                "P",
                "--audio-lang-list",
                "eng,fra",
                "--all-audio",
                "--subtitle-lang-list",
                "eng",
                "--all-subtitles",
                "--subtitle-forced",
                "--markers"
            ]
        );
        let n = hb.encode_args(&EncodeRequest {
            input: Path::new("/i"),
            title: 1,
            output: Path::new("/o"),
            preset: "P",
            format: "av_mkv",
            tracks: &Tracks::default(),
            extra: &[],
        });
        assert!(
            !n.iter().any(|a| a.to_string_lossy().starts_with("--audio")),
            "no choice: the preset's"
        );
    }

    #[test]
    fn preset_files_come_before_the_preset_name() {
        let hb = HandBrake::new(
            "HandBrakeCLI".into(),
            vec!["/p/a.json".into(), "/p/b.json".into()],
            None,
            1,
        );
        let args = hb.encode_args(&EncodeRequest {
            input: Path::new("/iso/Feature Disc.iso"),
            title: 3,
            output: Path::new("/media/.x.tmp"),
            preset: "My Preset",
            format: "av_mkv",
            tracks: &Tracks::default(),
            extra: &[],
        });
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--preset-import-file",
                "/p/a.json",
                "/p/b.json",
                "-Z",
                "My Preset",
                "-i",
                "/iso/Feature Disc.iso",
                "-t",
                "3",
                "--min-duration",
                "0",
                "-o",
                "/media/.x.tmp",
                "-f",
                "av_mkv"
            ]
        );
    }
}
