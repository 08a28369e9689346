//! An MLflow tracking sink over MLflow's REST API (`<uri>/api/2.0/mlflow/...`).
//!
//! The trainer's calls only touch an in-memory queue; a background thread owns the HTTP client
//! and does the talking, so a slow or dead tracking server never blocks or fails a step:
//!
//! - At start the thread finds or creates the experiment (`experiments/get-by-name`,
//!   `experiments/create`), then creates a run (`runs/create`) or, on a resume, continues the
//!   run named in `<log_dir>/mlflow_run.json` (`runs/get`, `runs/update` to RUNNING), records
//!   the run there, and logs the params once (`runs/log-batch`).
//! - Metric points and tags are sent with `runs/log-batch` within MLflow's limits (1000 metrics
//!   or 100 params/tags per request, 1 MB per request, param values of 6000 characters).
//! - A failed request (no connection, a timeout, HTTP 429 or 5xx) is retried with exponential
//!   backoff (200 ms doubling to 5 s) while points queue up, at most [`QUEUE_CAPACITY`] of
//!   them: past that the oldest are dropped and counted. An outage is logged once when it
//!   starts and once when it ends. Retries resend the very same points, and MLflow's SQL store
//!   ignores a point it already has (same key, step, timestamp and value), so a request whose
//!   answer was lost does not duplicate points.
//! - A request MLflow rejects (HTTP 4xx) is not retried: a rejected batch is dropped with one
//!   warning; refused credentials, a deleted experiment or a deleted run switch the sink off
//!   for the rest of the run (points are then counted as dropped).
//! - [`MlflowSink::finish`] drains the queue for at most its `wait`, then ends the run
//!   (`runs/update` with the status and end time); what is still unsent is counted as dropped.
//!
//! NaN and infinite values are sent as MLflow's JSON spells them (`"NaN"`, `"Infinity"`); the
//! server keeps NaN and stores infinities as the largest finite doubles.
//!
//! Credentials come from MLflow's own environment variables, `MLFLOW_TRACKING_TOKEN` (a Bearer
//! token) or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (Basic), else from a
//! `user:password@` part of the URI. Log lines show the URI without that part and without a
//! query string ([`redact_uri`]).
//!
//! Plain http only by default; the `mlflow-https` feature of corenet-train adds TLS (rustls).
//!
//! The parts: `config` (the recipe's `logging.mlflow`), `params` (a recipe as params), `batch`
//! (what one `runs/log-batch` request may hold), `tracking_uri` (the URI and its credentials),
//! `client` (HTTP to the server), `run_file` (the run recorded for a resume), `state` (the
//! queue and counters both sides share) and `worker` (the background thread).

mod batch;
mod client;
mod config;
mod params;
mod run_file;
mod state;
mod tracking_uri;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use batch::{
    mlflow_key, MAX_KEY_CHARS, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH,
    MAX_PARAM_VALUE_CHARS, MAX_TAG_VALUE_CHARS,
};
pub use config::{MlflowConfig, RunStatus};
pub use params::recipe_params;
pub use run_file::RUN_FILE;
pub use state::{MlflowStats, QUEUE_CAPACITY};
pub use tracking_uri::redact_uri;

use batch::{truncate_chars, Point};
use client::Client;
use state::{Finish, Shared};
use worker::{Setup, Worker, END_GRACE};

/// How long a sink dropped without [`MlflowSink::finish`] tries to send the rest.
const DROP_WAIT: Duration = Duration::from_secs(3);

/// Sends a run's params, metrics and tags to an MLflow tracking server from a background
/// thread. See the module docs.
pub struct MlflowSink {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MlflowSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowSink")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MlflowSink {
    /// Starts the background thread and returns at once; the run is found or created in the
    /// background (and retried until the server answers). `params` are logged once; with
    /// `resuming`, the run recorded in `log_dir/mlflow_run.json` is continued when it belongs
    /// to the same server and experiment. An invalid config switches the sink off with a
    /// warning (call [`MlflowConfig::validate`] first to fail on it instead).
    pub fn start(
        config: &MlflowConfig,
        log_dir: &Path,
        params: Vec<(String, String)>,
        resuming: bool,
    ) -> MlflowSink {
        let uri = match config.validate().and_then(|()| config.tracking_uri()) {
            Ok(uri) => uri,
            Err(e) => {
                tracing::warn!(error = %e, "MLflow logging is off");
                return MlflowSink::off();
            }
        };
        let shared = Arc::new(Shared::default());
        let setup = Setup::new(config, log_dir, params, resuming);
        let worker = Worker::new(Arc::clone(&shared), Client::new(&uri));
        let spawned = std::thread::Builder::new()
            .name("mlflow".to_owned())
            .spawn(move || worker.run(setup));
        match spawned {
            Ok(handle) => MlflowSink {
                shared,
                worker: Some(handle),
            },
            Err(e) => {
                tracing::warn!(error = %e, "MLflow logging is off: cannot start its thread");
                MlflowSink::off()
            }
        }
    }

    /// A sink without a worker: what is logged is dropped, and `finish` returns at once.
    fn off() -> MlflowSink {
        let shared = Arc::new(Shared::default());
        shared.switch_off();
        MlflowSink {
            shared,
            worker: None,
        }
    }

    /// Queues one step's metrics (never blocks on the network). Keys MLflow would refuse are
    /// made acceptable ([`mlflow_key`]).
    pub fn log_metrics(&self, step: u64, timestamp_ms: i64, metrics: &[(String, f64)]) {
        let points = metrics.iter().map(|(key, value)| Point {
            key: mlflow_key(key),
            value: *value,
            timestamp: timestamp_ms,
            step,
        });
        self.shared.lock().push(points);
        self.shared.notify();
    }

    /// Sets a run tag (sent with the next batch; a later value for the same key wins).
    pub fn set_tag(&self, key: &str, value: &str) {
        let mut state = self.shared.lock();
        if state.off {
            return;
        }
        state
            .tags
            .insert(mlflow_key(key), truncate_chars(value, MAX_TAG_VALUE_CHARS));
        drop(state);
        self.shared.notify();
    }

    /// The MLflow run id, once the run has been created or resumed.
    pub fn run_id(&self) -> Option<String> {
        self.shared.lock().run_id.clone()
    }

    /// The counters now.
    pub fn stats(&self) -> MlflowStats {
        self.shared.lock().stats()
    }

    /// Sends what is queued, retrying for at most `wait`, then ends the run with `status`
    /// (that last request may take up to 2 s more). Points still unsent are counted as dropped
    /// and reported with one warning.
    pub fn finish(mut self, status: RunStatus, wait: Duration) -> MlflowStats {
        self.close(status, wait)
    }

    fn close(&mut self, status: RunStatus, wait: Duration) -> MlflowStats {
        let deadline = Instant::now() + wait;
        // The worker stops by the deadline plus the end request's grace; a request cannot
        // outlast its own timeout, which the worker clamps to the time left.
        let give_up = deadline + END_GRACE + Duration::from_secs(1);
        let (done, mut stats) = self.shared.finish(Finish { status, deadline }, give_up);
        let worker = self.worker.take();
        if !done {
            // Left behind (detached); what it still holds is as good as lost.
            tracing::warn!(
                pending = stats.pending_metrics,
                "the MLflow thread did not stop in time; leaving it"
            );
            stats.dropped_metrics += stats.pending_metrics;
            stats.pending_metrics = 0;
            return stats;
        }
        if let Some(handle) = worker {
            if handle.join().is_err() {
                tracing::warn!("the MLflow thread panicked");
            }
        }
        stats
    }
}

impl Drop for MlflowSink {
    /// A sink dropped without [`MlflowSink::finish`] (an error or panic unwinding the trainer)
    /// marks the run KILLED, sending what it can within a few seconds.
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.close(RunStatus::Killed, DROP_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_points() {
        // A loopback port nothing listens on: the worker never gets past the experiment.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let config = MlflowConfig {
            uri: format!("http://127.0.0.1:{port}"),
            experiment: "e".into(),
            run_name: None,
            finish_timeout_s: 60,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = MlflowSink::start(&config, dir.path(), Vec::new(), false);
        let metrics: Vec<(String, f64)> = (0..100).map(|i| (format!("m{i}"), 0.5)).collect();
        let steps = (QUEUE_CAPACITY as u64 + 500) / 100;
        for step in 0..steps {
            sink.log_metrics(step, 0, &metrics);
        }
        let stats = sink.stats();
        assert_eq!(stats.pending_metrics, QUEUE_CAPACITY as u64, "{stats:?}");
        assert_eq!(stats.dropped_metrics, 500, "{stats:?}");
        {
            let state = sink.shared.lock();
            let oldest = state.queue.front().expect("queued");
            assert_eq!((oldest.step, oldest.key.as_str()), (5, "m0"));
        }
        let stats = sink.finish(RunStatus::Killed, Duration::ZERO);
        assert_eq!(stats.dropped_metrics, QUEUE_CAPACITY as u64 + 500);
        assert_eq!(stats.pending_metrics, 0);
    }

    #[test]
    fn a_sink_with_a_bad_config_is_off_and_finishes_at_once() {
        let config = MlflowConfig {
            uri: "nonsense".into(),
            experiment: "e".into(),
            run_name: None,
            finish_timeout_s: 60,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = MlflowSink::start(&config, dir.path(), Vec::new(), false);
        sink.log_metrics(1, 0, &[("loss".into(), 1.0)]);
        let started = Instant::now();
        let stats = sink.finish(RunStatus::Finished, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(stats.dropped_metrics, 1);
        assert_eq!(stats.pending_metrics, 0);
    }
}
