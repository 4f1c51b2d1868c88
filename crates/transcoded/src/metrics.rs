//! Prometheus metrics of one worker, served as text on `[transcode] metrics-address` (`GET /metrics`).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `rafty_jobs_total{outcome}` | counter | deliveries settled: `done`, `skipped` (already done), `retried`, `dead`, `requeued` |
//! | `rafty_encode_seconds` | histogram | wall time of each title's encode, verification included |
//! | `rafty_handbrake_exits_total{code}` | counter | HandBrakeCLI runs by exit status (`signal` when killed) |
//! | `rafty_encode_progress_ratio` | gauge | progress of the current encode, 0 to 1 |
//! | `rafty_encode_fps` | gauge | frames per second of the current encode |
//! | `rafty_worker_busy` | gauge | 1 while a job is in hand |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of `rafty_jobs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How the delivery was settled.
    pub outcome: String,
}

/// Label of `rafty_handbrake_exits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExitLabel {
    /// Exit status, or `signal`.
    pub code: String,
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Deliveries settled, by outcome.
    pub jobs: Family<OutcomeLabel, Counter>,
    /// Encode wall times.
    pub encode_seconds: Histogram,
    /// HandBrakeCLI runs by exit status.
    pub handbrake_exits: Family<ExitLabel, Counter>,
    /// Current progress.
    pub progress: Gauge<f64, AtomicU64>,
    /// Current rate.
    pub fps: Gauge<f64, AtomicU64>,
    /// Whether a job is in hand.
    pub busy: Gauge,
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let jobs = Family::<OutcomeLabel, Counter>::default();
        // 10 s to ~3 h.
        let encode_seconds = Histogram::new(exponential_buckets(10.0, 2.0, 11));
        let handbrake_exits = Family::<ExitLabel, Counter>::default();
        let progress = Gauge::<f64, AtomicU64>::default();
        let fps = Gauge::<f64, AtomicU64>::default();
        let busy = Gauge::default();
        registry.register("rafty_jobs", "Deliveries settled, by outcome", jobs.clone());
        registry.register(
            "rafty_encode_seconds",
            "Wall time of each title's encode",
            encode_seconds.clone(),
        );
        registry.register(
            "rafty_handbrake_exits",
            "HandBrakeCLI runs by exit status",
            handbrake_exits.clone(),
        );
        registry.register(
            "rafty_encode_progress_ratio",
            "Progress of the current encode",
            progress.clone(),
        );
        registry.register(
            "rafty_encode_fps",
            "Frames per second of the current encode",
            fps.clone(),
        );
        registry.register(
            "rafty_worker_busy",
            "1 while a job is in hand",
            busy.clone(),
        );
        Arc::new(Metrics {
            registry,
            jobs,
            encode_seconds,
            handbrake_exits,
            progress,
            fps,
            busy,
        })
    }

    /// Count a settled delivery.
    pub fn job(&self, outcome: &str) {
        self.jobs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Count a HandBrakeCLI run.
    pub fn handbrake_exit(&self, code: &str) {
        self.handbrake_exits
            .get_or_create(&ExitLabel {
                code: code.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serve `GET /metrics` on `addr` until the process ends. Binding errors are returned at once.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| {
                        let metrics = Arc::clone(&metrics);
                        async move {
                            let response = if req.uri().path() == "/metrics" {
                                Response::builder()
                                .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
                            } else {
                                Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                            };
                            Ok::<_, std::convert::Infallible>(response.expect("a valid response"))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}
