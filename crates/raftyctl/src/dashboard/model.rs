//! What the dashboard shows, as one value: drives, jobs in flight, workers, queues, dead letters and
//! history, changed by the fleet's events and by what the poller reads, and turned into a snapshot
//! (for a browser that connects) and coalesced deltas (for those connected).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rafty_core::wire::{Event, WorkerState, WorkerStatus};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::history::Entry;
use crate::deadletter::Listed;
use crate::status::Depth;

/// A drive, as its rip last reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Drive {
    /// The ripping host.
    pub host: String,
    /// The drive's device.
    pub device: String,
    /// `ripping`, `done` or `failed`.
    pub state: &'static str,
    /// 0 to 100, while ripping.
    pub percent: Option<f64>,
    /// Bytes per second, while ripping.
    pub rate: Option<f64>,
    /// Seconds left, when rip says.
    pub eta_secs: Option<u64>,
    /// Sectors found unreadable (the last count rip sent).
    pub unreadable: u64,
    /// The image being written or written.
    pub image: Option<String>,
    /// Why the rip failed.
    pub error: Option<String>,
    /// Whether rip is done with the disc (finished or gave up): it may be taken out.
    pub safe_to_remove: bool,
    /// When the last event came (Unix ms).
    pub updated_ms: u64,
}

/// A job in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Job {
    /// The job id.
    pub id: String,
    /// Its output name (from the worker's status, else the started event's output file).
    pub name: String,
    /// The title being encoded.
    pub title: Option<u32>,
    /// The worker's host.
    pub host: String,
    /// `download`, `encode` or `upload`.
    pub stage: String,
    /// 0 to 100 of the stage.
    pub percent: Option<f64>,
    /// Frames per second.
    pub fps: Option<f64>,
    /// Seconds left.
    pub eta_secs: Option<u64>,
    /// The attempt (0 = first), when known.
    pub attempt: Option<u32>,
    /// When the worker took it (Unix ms).
    pub started_ms: u64,
}

/// A worker process.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Worker {
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// `idle`, `working`, `draining`, `drained`, `stopping` or `unknown`.
    pub state: &'static str,
    /// Its version.
    pub version: String,
    /// When it last reported (heartbeat, or an answer to status/drain/resume), Unix ms.
    pub seen_ms: u64,
    /// The job in hand: its id.
    pub job_id: Option<String>,
    /// The job in hand: its name.
    pub job_name: Option<String>,
}

/// The broker as the dashboard sees it; the URL has its password masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BrokerState {
    /// The node in use, password masked.
    pub url: String,
    /// Whether the dashboard is connected.
    pub connected: bool,
    /// The last connection error, when not connected.
    pub error: Option<String>,
}

/// Which map an entity is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Drive,
    Job,
    Worker,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Drive => "drives",
            Kind::Job => "jobs",
            Kind::Worker => "workers",
        }
    }
}

/// History entries in a snapshot (oldest first); the rest by [`Model::history_page`].
pub const SNAPSHOT_HISTORY: usize = 200;

/// Workers silent for this long are dropped from the page.
const FORGET_WORKER_MS: u64 = 10 * 60 * 1000;

/// How many ended jobs are remembered against late worker statuses.
const ENDED_KEPT: usize = 1000;

/// The dashboard's state, and what changed since the last delta.
#[derive(Debug)]
pub struct Model {
    drives: BTreeMap<String, Drive>,
    jobs: BTreeMap<String, Job>,
    workers: BTreeMap<String, Worker>,
    queues: Vec<Depth>,
    dead_letters: Vec<Listed>,
    history: VecDeque<Entry>,
    history_cap: usize,
    broker: BrokerState,
    seq: u64,
    dirty: BTreeSet<(Kind, String)>,
    last_sent: HashMap<(Kind, String), Instant>,
    new_history: Vec<Entry>,
    /// Jobs that ended lately, oldest first: a worker's status sent just before its `done` but
    /// read after it must not bring the job back.
    ended: std::collections::VecDeque<String>,
    queues_dirty: bool,
    dead_dirty: bool,
    broker_dirty: bool,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_ms(s: &str) -> Option<u64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
}

impl Model {
    /// An empty model holding at most `history_cap` history entries, starting with `history`
    /// (oldest first).
    pub fn new(broker_url: String, history: Vec<Entry>, history_cap: usize) -> Model {
        let mut h: VecDeque<Entry> = history.into();
        while h.len() > history_cap {
            h.pop_front();
        }
        Model {
            drives: BTreeMap::new(),
            jobs: BTreeMap::new(),
            workers: BTreeMap::new(),
            queues: Vec::new(),
            dead_letters: Vec::new(),
            history: h,
            history_cap,
            broker: BrokerState {
                url: broker_url,
                connected: false,
                error: None,
            },
            seq: 0,
            dirty: BTreeSet::new(),
            last_sent: HashMap::new(),
            new_history: Vec::new(),
            ended: std::collections::VecDeque::new(),
            queues_dirty: false,
            dead_dirty: false,
            broker_dirty: false,
        }
    }

    fn touch(&mut self, kind: Kind, key: &str) {
        self.dirty.insert((kind, key.to_owned()));
    }

    /// The jobs in flight.
    #[cfg(test)]
    pub fn jobs(&self) -> &BTreeMap<String, Job> {
        &self.jobs
    }

    /// The workers.
    #[cfg(test)]
    pub fn workers(&self) -> &BTreeMap<String, Worker> {
        &self.workers
    }

    /// The history, oldest first.
    pub fn history(&self) -> &VecDeque<Entry> {
        &self.history
    }

    fn job_entry(&mut self, id: &str, host: &str, now: u64) -> &mut Job {
        self.touch(Kind::Job, id);
        self.jobs.entry(id.to_owned()).or_insert_with(|| Job {
            id: id.to_owned(),
            name: String::new(),
            title: None,
            host: host.to_owned(),
            stage: "encode".into(),
            percent: None,
            fps: None,
            eta_secs: None,
            attempt: None,
            started_ms: now,
        })
    }

    /// The workers on `host`, by key.
    fn workers_on(&self, host: &str) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, w)| w.host == host)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The one worker on `host` takes job `id` (several on one host: which one is not known
    /// until it reports).
    fn worker_has(&mut self, host: &str, id: &str, name: &str) {
        let on = self.workers_on(host);
        if let [key] = on.as_slice()
            && let Some(w) = self.workers.get_mut(key)
            && (w.job_id.as_deref() != Some(id) || w.job_name.as_deref() != Some(name))
        {
            w.job_id = Some(id.to_owned());
            w.job_name = Some(name.to_owned()).filter(|n| !n.is_empty());
            if w.state == "idle" {
                w.state = "working";
            }
            let key = key.clone();
            self.touch(Kind::Worker, &key);
        }
    }

    fn job_ended(&mut self, id: &str) {
        if self.jobs.remove(id).is_some() {
            self.touch(Kind::Job, id);
        }
        if !self.ended.iter().any(|e| e == id) {
            self.ended.push_back(id.to_owned());
            if self.ended.len() > ENDED_KEPT {
                self.ended.pop_front();
            }
        }
        let keys: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.job_id.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(w) = self.workers.get_mut(&k) {
                w.job_id = None;
                w.job_name = None;
                if w.state == "working" {
                    w.state = "idle";
                }
            }
            self.touch(Kind::Worker, &k);
        }
    }

    /// A worker's status: its heartbeat, or its answer to a control request.
    pub fn worker_status(&mut self, s: &WorkerStatus, now: u64) {
        let key = format!("{}/{}", s.host, s.pid);
        // A status from before the job's end, read after it: the job is over all the same.
        let job = s
            .job
            .as_ref()
            .filter(|j| !self.ended.iter().any(|e| *e == j.id.to_string()));
        let worker = Worker {
            host: s.host.clone(),
            pid: s.pid,
            state: s.state.as_str(),
            version: s.version.clone(),
            seen_ms: now,
            job_id: job.map(|j| j.id.to_string()),
            job_name: job.map(|j| j.name.clone()),
        };
        self.workers.insert(key.clone(), worker);
        self.touch(Kind::Worker, &key);
        if let Some(a) = job {
            let id = a.id.to_string();
            let job = self.job_entry(&id, &s.host, now);
            job.name = a.name.clone();
            job.host = s.host.clone();
            job.attempt = Some(a.attempt);
            if let Some(t) = rfc3339_ms(&a.started_at) {
                job.started_ms = t;
            }
            if a.title.is_some() {
                job.title = a.title;
            }
            if let Some(stage) = &a.stage {
                job.stage = stage.clone();
            }
            if a.percent.is_some() {
                job.percent = a.percent;
                job.fps = a.fps;
                job.eta_secs = a.eta_secs;
            }
        } else if matches!(s.state, WorkerState::Idle | WorkerState::Drained) {
            // An idle worker on a host of its own has no job: a done/failed event the dashboard
            // missed (it was not running) leaves nothing behind.
            if self.workers_on(&s.host).len() == 1 {
                let stale: Vec<String> = self
                    .jobs
                    .values()
                    .filter(|j| j.host == s.host)
                    .map(|j| j.id.clone())
                    .collect();
                for id in stale {
                    self.job_ended(&id);
                }
            }
        }
    }

    /// An event from the fleet.
    pub fn apply(&mut self, event: &Event, now: u64) {
        match event {
            Event::Started(e) => {
                let id = e.id.to_string();
                // Taken again (a retry, a requeue from the dead letters): in flight again.
                self.ended.retain(|x| *x != id);
                let stem = e
                    .output
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let job = self.job_entry(&id, &e.host, now);
                if job.name.is_empty() {
                    job.name = stem;
                }
                job.host = e.host.clone();
                job.title = Some(e.title);
                job.stage = "encode".into();
                job.percent = Some(0.0);
                let name = job.name.clone();
                self.worker_has(&e.host, &id, &name);
            }
            Event::Progress(e) => {
                let id = e.id.to_string();
                let job = self.job_entry(&id, &e.host, now);
                job.host = e.host.clone();
                job.title = Some(e.title);
                job.stage = "encode".into();
                job.percent = Some(e.percent);
                job.fps = e.fps;
                job.eta_secs = e.eta_secs;
                let name = job.name.clone();
                self.worker_has(&e.host, &id, &name);
            }
            Event::Transfer(e) => {
                let id = e.id.to_string();
                let job = self.job_entry(&id, &e.host, now);
                job.host = e.host.clone();
                job.stage = e.direction.as_str().into();
                job.percent = Some(e.percent);
                job.fps = None;
                job.eta_secs = e
                    .rate
                    .filter(|r| *r > 0.0)
                    .map(|r| (e.total.saturating_sub(e.bytes) as f64 / r) as u64);
            }
            Event::Done(e) => self.job_ended(&e.id.to_string()),
            Event::Failed(e) => self.job_ended(&e.id),
            Event::Split(e) => self.job_ended(&e.id.to_string()),
            Event::Heartbeat(s) => self.worker_status(s, now),
            Event::RipProgress(e) => {
                let key = format!("{}:{}", e.host, e.device.display());
                self.drives.insert(
                    key.clone(),
                    Drive {
                        host: e.host.clone(),
                        device: e.device.display().to_string(),
                        state: "ripping",
                        percent: Some(e.percent),
                        rate: Some(e.rate),
                        eta_secs: e.eta_secs,
                        unreadable: e.unreadable,
                        image: Some(e.image.display().to_string()),
                        error: None,
                        safe_to_remove: false,
                        updated_ms: now,
                    },
                );
                self.touch(Kind::Drive, &key);
            }
            Event::RipDone(e) => {
                let key = format!("{}:{}", e.host, e.device.display());
                let unreadable = self.drives.get(&key).map_or(0, |d| d.unreadable);
                self.drives.insert(
                    key.clone(),
                    Drive {
                        host: e.host.clone(),
                        device: e.device.display().to_string(),
                        state: "done",
                        percent: Some(100.0),
                        rate: None,
                        eta_secs: None,
                        unreadable,
                        image: Some(e.image.display().to_string()),
                        error: None,
                        safe_to_remove: true,
                        updated_ms: now,
                    },
                );
                self.touch(Kind::Drive, &key);
            }
            Event::RipFailed(e) => {
                let key = format!("{}:{}", e.host, e.device.display());
                let image = self.drives.get(&key).and_then(|d| d.image.clone());
                let unreadable = self.drives.get(&key).map_or(0, |d| d.unreadable);
                self.drives.insert(
                    key.clone(),
                    Drive {
                        host: e.host.clone(),
                        device: e.device.display().to_string(),
                        state: "failed",
                        percent: None,
                        rate: None,
                        eta_secs: None,
                        unreadable,
                        image,
                        error: Some(e.error.clone()),
                        safe_to_remove: true,
                        updated_ms: now,
                    },
                );
                self.touch(Kind::Drive, &key);
            }
            Event::DiscDone(_) | Event::ReplicaAway(_) | Event::AuditDone(_) => {}
        }
    }

    /// Queue depths as just read; a delta only when they changed.
    pub fn set_queues(&mut self, queues: Vec<Depth>) {
        if queues != self.queues {
            self.queues = queues;
            self.queues_dirty = true;
        }
    }

    /// The dead letters as just read; a delta only when they changed.
    pub fn set_dead_letters(&mut self, dead: Vec<Listed>) {
        if dead != self.dead_letters {
            self.dead_letters = dead;
            self.dead_dirty = true;
        }
    }

    /// The broker connection's state.
    pub fn set_broker(&mut self, connected: bool, error: Option<String>) {
        if self.broker.connected != connected || self.broker.error != error {
            self.broker.connected = connected;
            self.broker.error = error;
            self.broker_dirty = true;
        }
    }

    /// The node connected to (password masked).
    pub fn set_broker_url(&mut self, url: String) {
        if self.broker.url != url {
            self.broker.url = url;
            self.broker_dirty = true;
        }
    }

    /// A history entry (already on disk); the oldest goes past the cap.
    pub fn add_history(&mut self, entry: Entry) {
        self.history.push_back(entry.clone());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        self.new_history.push(entry);
    }

    /// Drop workers silent for ten minutes.
    pub fn forget_silent(&mut self, now: u64) {
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.seen_ms) > FORGET_WORKER_MS)
            .map(|(k, _)| k.clone())
            .collect();
        let mut jobs = Vec::new();
        for k in gone {
            if let Some(w) = self.workers.remove(&k) {
                jobs.extend(w.job_id);
            }
            self.touch(Kind::Worker, &k);
        }
        // A worker that went silent with a job in hand (its host died) holds it no more: the
        // broker gives the job to another worker, whose own events list it again.
        let hosts: std::collections::BTreeSet<&str> =
            self.workers.values().map(|w| w.host.as_str()).collect();
        let orphans: Vec<String> = self
            .jobs
            .iter()
            .filter(|(id, j)| jobs.contains(id) || !hosts.contains(j.host.as_str()))
            .filter(|(_, j)| now.saturating_sub(j.started_ms) > FORGET_WORKER_MS)
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphans {
            self.job_ended(&id);
        }
    }

    /// History entries older than the newest `skip`, newest first, at most `limit`: what the
    /// page's "Show older" asks for.
    pub fn history_page(&self, skip: usize, limit: usize) -> String {
        let page: Vec<&Entry> = self.history.iter().rev().skip(skip).take(limit).collect();
        serde_json::to_string(&page).expect("entries serialize")
    }

    /// Everything a browser that just connected needs, as JSON, written straight from the model:
    /// the newest [`SNAPSHOT_HISTORY`] history entries and how many there are in all (the page
    /// asks for older ones when it shows them).
    pub fn snapshot(&self, actions: bool, now: u64) -> String {
        /// The snapshot's fields, borrowed.
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Snapshot<'a> {
            seq: u64,
            now_ms: u64,
            actions: bool,
            broker: &'a BrokerState,
            drives: &'a BTreeMap<String, Drive>,
            jobs: &'a BTreeMap<String, Job>,
            workers: &'a BTreeMap<String, Worker>,
            queues: &'a [Depth],
            dead_letters: &'a [Listed],
            history: Vec<&'a Entry>,
            history_total: usize,
        }
        let settled = self.history.len().saturating_sub(self.new_history.len());
        serde_json::to_string(&Snapshot {
            seq: self.seq,
            now_ms: now,
            actions,
            broker: &self.broker,
            drives: &self.drives,
            jobs: &self.jobs,
            workers: &self.workers,
            queues: &self.queues,
            dead_letters: &self.dead_letters,
            // Entries still waiting for the next delta are left to it, or a browser that
            // connects in between would list them twice.
            history: self
                .history
                .iter()
                .take(settled)
                .skip(settled.saturating_sub(SNAPSHOT_HISTORY))
                .collect(),
            history_total: settled,
        })
        .expect("the snapshot serializes")
    }

    /// What changed since the last delta, except entities sent less than `min_interval` ago (they
    /// stay pending: at most one delta per job, drive or worker per interval); `None` when nothing
    /// is due.
    pub fn take_delta(&mut self, at: Instant, min_interval: Duration, now: u64) -> Option<Value> {
        let due: Vec<(Kind, String)> = self
            .dirty
            .iter()
            .filter(|k| {
                self.last_sent
                    .get(*k)
                    .is_none_or(|t| at.duration_since(*t) >= min_interval)
            })
            .cloned()
            .collect();
        if due.is_empty()
            && self.new_history.is_empty()
            && !self.queues_dirty
            && !self.dead_dirty
            && !self.broker_dirty
        {
            return None;
        }
        let mut out = Map::new();
        for (kind, key) in &due {
            self.dirty.remove(&(*kind, key.clone()));
            let value = match kind {
                Kind::Drive => self.drives.get(key).map(|v| json!(v)),
                Kind::Job => self.jobs.get(key).map(|v| json!(v)),
                Kind::Worker => self.workers.get(key).map(|v| json!(v)),
            };
            if value.is_some() {
                self.last_sent.insert((*kind, key.clone()), at);
            } else {
                self.last_sent.remove(&(*kind, key.clone()));
            }
            out.entry(kind.name())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object")
                .insert(key.clone(), value.unwrap_or(Value::Null));
        }
        if !self.new_history.is_empty() {
            out.insert(
                "history".into(),
                json!(std::mem::take(&mut self.new_history)),
            );
        }
        if std::mem::take(&mut self.queues_dirty) {
            out.insert("queues".into(), json!(self.queues));
        }
        if std::mem::take(&mut self.dead_dirty) {
            out.insert("dead-letters".into(), json!(self.dead_letters));
        }
        if std::mem::take(&mut self.broker_dirty) {
            out.insert("broker".into(), json!(self.broker));
        }
        self.seq += 1;
        out.insert("seq".into(), json!(self.seq));
        out.insert("now-ms".into(), json!(now));
        Some(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use rafty_core::wire::{Activity, Done, Progress, RipDone, RipProgress, Started};
    use uuid::Uuid;

    use super::*;

    fn status(host: &str, state: WorkerState, job: Option<Activity>) -> WorkerStatus {
        WorkerStatus {
            host: host.into(),
            app: "transcoded".into(),
            version: "0.1.0".into(),
            handbrake: "HandBrake 1.6.1".into(),
            pid: 42,
            uptime_secs: 5,
            state,
            job,
        }
    }

    fn progress(id: Uuid, percent: f64) -> Event {
        Event::Progress(Progress {
            id,
            host: "attic".into(),
            title: 1,
            percent,
            fps: Some(250.0),
            eta_secs: Some(12),
        })
    }

    #[test]
    fn a_status_sent_before_the_done_but_read_after_it_does_not_bring_the_job_back() {
        let mut m = Model::new(String::new(), Vec::new(), 10);
        let id = Uuid::new_v4();
        let working = status(
            "attic",
            WorkerState::Working,
            Some(Activity {
                id,
                name: "Film".into(),
                source: "/iso/Film.iso".into(),
                attempt: 0,
                started_at: "2026-12-03T00:00:00Z".into(),
                title: Some(1),
                percent: Some(99.0),
                fps: None,
                eta_secs: None,
                stage: None,
            }),
        );
        m.worker_status(&working, 1);
        assert!(m.jobs().contains_key(&id.to_string()));
        m.apply(
            &Event::Done(Done {
                id,
                host: "attic".into(),
                name: "Film".into(),
                disc: None,
                outputs: Vec::new(),
                skipped: false,
                attempt: 0,
                preset: "P".into(),
                handbrake: "H".into(),
                elapsed_secs: 1.0,
                finished_at: "2026-12-03T00:00:00Z".into(),
                split: None,
            }),
            2,
        );
        m.worker_status(&working, 3);
        assert!(m.jobs().is_empty(), "the late status is not a new job");
        // Taken again (a requeue): in flight again.
        m.apply(
            &Event::Started(Started {
                id,
                host: "attic".into(),
                title: 1,
                output: "/media/Film.mkv".into(),
                preset: "P".into(),
            }),
            4,
        );
        assert!(m.jobs().contains_key(&id.to_string()));
    }

    #[test]
    fn a_job_whose_worker_went_silent_is_no_longer_in_flight() {
        let mut m = Model::new(String::new(), Vec::new(), 10);
        let id = Uuid::new_v4();
        m.worker_status(&status("attic", WorkerState::Idle, None), 1);
        m.apply(
            &Event::Started(Started {
                id,
                host: "attic".into(),
                title: 1,
                output: "/media/Film.mkv".into(),
                preset: "P".into(),
            }),
            2,
        );
        m.forget_silent(5 * 60 * 1000);
        assert!(m.jobs().contains_key(&id.to_string()), "still heard from");
        m.forget_silent(2 + FORGET_WORKER_MS + 1);
        assert!(m.workers().is_empty());
        assert!(
            m.jobs().is_empty(),
            "the job of a host that went silent is not shown as in flight"
        );
    }

    #[test]
    fn a_snapshot_leaves_history_not_yet_sent_to_the_next_delta() {
        let mut m = Model::new(String::new(), vec![Entry::test_entry("old")], 10);
        m.add_history(Entry::test_entry("new"));
        let s: Value = serde_json::from_str(&m.snapshot(false, 1)).unwrap();
        assert_eq!(s["history"].as_array().unwrap().len(), 1, "{s}");
        assert_eq!(s["history"][0]["name"], "old");
        assert_eq!(s["history-total"], 1);
        let d = m
            .take_delta(Instant::now(), Duration::from_millis(250), 2)
            .unwrap();
        assert_eq!(d["history"][0]["name"], "new", "{d}");
        let s: Value = serde_json::from_str(&m.snapshot(false, 3)).unwrap();
        assert_eq!(s["history-total"], 2);
    }

    #[test]
    fn a_job_is_named_followed_and_removed_and_its_worker_knows_it() {
        let mut m = Model::new("amqp://u:***@h/".into(), Vec::new(), 10);
        let id = Uuid::new_v4();
        m.worker_status(&status("attic", WorkerState::Idle, None), 1);
        m.apply(
            &Event::Started(Started {
                id,
                host: "attic".into(),
                title: 1,
                output: "/media/Big Film.mkv".into(),
                preset: "P".into(),
            }),
            2,
        );
        m.apply(&progress(id, 41.5), 3);
        let job = &m.jobs()[&id.to_string()];
        assert_eq!(job.name, "Big Film");
        assert_eq!(job.percent, Some(41.5));
        assert_eq!(job.fps, Some(250.0));
        let w = &m.workers()["attic/42"];
        assert_eq!(w.state, "working");
        assert_eq!(w.job_name.as_deref(), Some("Big Film"));

        let d = m
            .take_delta(Instant::now(), Duration::from_millis(250), 4)
            .unwrap();
        assert_eq!(d["jobs"][id.to_string()]["percent"], 41.5);
        assert_eq!(d["workers"]["attic/42"]["job-name"], "Big Film");

        m.apply(
            &Event::Done(Done {
                id,
                host: "attic".into(),
                name: "Big Film".into(),
                disc: None,
                outputs: Vec::new(),
                skipped: false,
                attempt: 0,
                preset: "P".into(),
                handbrake: "H".into(),
                elapsed_secs: 1.0,
                finished_at: "2026-12-03T00:00:00Z".into(),
                split: None,
            }),
            5,
        );
        assert!(m.jobs().is_empty());
        // A removal is sent as null once its interval is over.
        let later = Instant::now() + Duration::from_millis(300);
        let d = m.take_delta(later, Duration::from_millis(250), 6).unwrap();
        assert!(d["jobs"][id.to_string()].is_null(), "{d}");
        assert_eq!(d["workers"]["attic/42"]["state"], "idle");
    }

    #[test]
    fn progress_is_coalesced_to_one_delta_per_job_per_interval() {
        let mut m = Model::new(String::new(), Vec::new(), 10);
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        let every = Duration::from_millis(250);
        m.apply(&progress(id, 1.0), 0);
        assert!(m.take_delta(t0, every, 0).is_some());
        m.apply(&progress(id, 2.0), 0);
        m.apply(&progress(id, 3.0), 0);
        assert!(
            m.take_delta(t0 + Duration::from_millis(100), every, 0)
                .is_none(),
            "sent 100 ms ago: waits"
        );
        let d = m
            .take_delta(t0 + Duration::from_millis(260), every, 0)
            .unwrap();
        assert_eq!(d["jobs"][id.to_string()]["percent"], 3.0, "the latest wins");
        assert!(
            m.take_delta(t0 + Duration::from_millis(600), every, 0)
                .is_none(),
            "nothing new"
        );
        // Another job is not held back by this one's interval.
        let other = Uuid::new_v4();
        m.apply(&progress(id, 4.0), 0);
        m.apply(&progress(other, 1.0), 0);
        let d = m
            .take_delta(t0 + Duration::from_millis(300), every, 0)
            .unwrap();
        assert!(d["jobs"].get(id.to_string()).is_none(), "{d}");
        assert_eq!(d["jobs"][other.to_string()]["percent"], 1.0);
    }

    #[test]
    fn drives_say_when_the_disc_may_be_removed() {
        let mut m = Model::new(String::new(), Vec::new(), 10);
        m.apply(
            &Event::RipProgress(RipProgress {
                device: "/dev/sr0".into(),
                image: "/iso/X.iso.part".into(),
                done: 5,
                total: 10,
                percent: 50.0,
                rate: 1.1e7,
                eta_secs: Some(3),
                unreadable: 7,
                host: "den".into(),
            }),
            1,
        );
        let s: Value = serde_json::from_str(&m.snapshot(false, 1)).unwrap();
        assert_eq!(s["drives"]["den:/dev/sr0"]["state"], "ripping");
        assert_eq!(s["drives"]["den:/dev/sr0"]["safe-to-remove"], false);
        assert_eq!(s["drives"]["den:/dev/sr0"]["unreadable"], 7);
        m.apply(
            &Event::RipDone(RipDone {
                device: "/dev/sr0".into(),
                image: "/iso/X.iso".into(),
                job: Uuid::nil(),
                size: 10,
                host: "den".into(),
            }),
            2,
        );
        let s: Value = serde_json::from_str(&m.snapshot(true, 2)).unwrap();
        assert_eq!(s["drives"]["den:/dev/sr0"]["safe-to-remove"], true);
        assert_eq!(
            s["drives"]["den:/dev/sr0"]["unreadable"], 7,
            "the count rip last sent stays with the finished disc"
        );
        assert_eq!(s["actions"], true);
    }

    #[test]
    fn history_is_capped_and_queues_are_sent_only_when_they_change() {
        let entry = |n: u32| Entry::test_entry(&format!("job-{n}"));
        let mut m = Model::new(String::new(), (0..5).map(entry).collect(), 3);
        assert_eq!(m.history().len(), 3);
        assert_eq!(m.history()[0].name, "job-2");
        let page: Value = serde_json::from_str(&m.history_page(1, 5)).unwrap();
        let names: Vec<&str> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["job-3", "job-2"],
            "newest first, the newest one skipped"
        );
        let s: Value = serde_json::from_str(&m.snapshot(false, 0)).unwrap();
        assert_eq!(s["history-total"], 3);
        m.add_history(entry(9));
        assert_eq!(m.history().len(), 3);
        assert_eq!(m.history()[2].name, "job-9");
        let t = Instant::now();
        let d = m.take_delta(t, Duration::ZERO, 0).unwrap();
        assert_eq!(d["history"][0]["name"], "job-9");
        let q = vec![Depth {
            name: "rafty.transcode".into(),
            messages: 2,
            consumers: 1,
        }];
        m.set_queues(q.clone());
        assert_eq!(
            m.take_delta(t, Duration::ZERO, 0).unwrap()["queues"][0]["messages"],
            2
        );
        m.set_queues(q);
        assert!(m.take_delta(t, Duration::ZERO, 0).is_none());
    }
}
