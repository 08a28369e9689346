//! The background thread: opens the run ([`setup`]), sends the params and then what the sink
//! queues ([`stream`]), retrying failed requests ([`retry`]), and ends the run on `finish`.
//! Only this thread talks to the server.

mod retry;
mod setup;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::client::Client;
use super::state::Shared;
use retry::Sent;
pub(super) use setup::Setup;

/// Time ending the run may take after the finish wait is over (the queue drained late).
pub(super) const END_GRACE: Duration = Duration::from_secs(2);

/// Why the worker stopped before draining.
enum Stop {
    OutOfTime,
    /// Nothing will get through (credentials refused, experiment or run deleted, a malformed
    /// answer): the sink switches itself off.
    Off(String),
}

/// The background thread's side.
pub(super) struct Worker {
    shared: Arc<Shared>,
    client: Client,
    backoff: Duration,
    /// Failed requests of the outage going on; 0 while the server answers.
    outage_failures: u64,
    /// The end request may go on this long after the finish deadline.
    grace_until: Option<Instant>,
    rejected_warned: bool,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, client: Client) -> Worker {
        Worker {
            shared,
            client,
            backoff: retry::BACKOFF_START,
            outage_failures: 0,
            grace_until: None,
            rejected_warned: false,
        }
    }

    /// The thread's body: returns once the run has ended, or the sink is off and `finish`
    /// came.
    pub(super) fn run(mut self, setup: Setup) {
        if let Err(Stop::Off(reason)) = self.open_and_stream(&setup) {
            tracing::warn!(uri = %self.client.base, reason = %reason, "MLflow logging is off for the rest of the run");
            self.switch_off_until_finish();
        }
        self.close();
    }

    /// Opens the run, logs the params, streams until `finish`, and ends the run unless the
    /// sink switched off.
    fn open_and_stream(&mut self, setup: &Setup) -> Result<(), Stop> {
        let (run_id, logged) = self.open_run(setup)?;
        self.shared.lock().run_id = Some(run_id.clone());
        let result = self
            .log_params(&run_id, &setup.params, &logged)
            .and_then(|()| self.stream(&run_id));
        if !matches!(result, Err(Stop::Off(_))) {
            self.end_run(&run_id);
        }
        result
    }

    /// `runs/update` with the finish status and the end time.
    fn end_run(&mut self, run_id: &str) {
        let Some(status) = self.shared.lock().finish.map(|f| f.status) else {
            return;
        };
        self.grace_until = Some(Instant::now() + END_GRACE);
        let body = json!({ "run_id": run_id, "status": status.as_str(), "end_time": now_ms() });
        match self.send(|c, t| c.post("runs/update", &body, t)) {
            Sent::Answer(_) => {
                tracing::info!(uri = %self.client.base, run_id, status = status.as_str(), "ended MLflow run");
            }
            Sent::Rejected(r) => {
                tracing::warn!(run_id, error = %r, "MLflow refused to end the run")
            }
            Sent::OutOfTime => {
                tracing::warn!(uri = %self.client.base, run_id, "could not end the MLflow run in time; it stays RUNNING there")
            }
        }
    }

    /// Drops what is queued and what comes, until `finish`.
    fn switch_off_until_finish(&self) {
        let mut state = self.shared.lock();
        state.off = true;
        state.drop_pending();
        state.tags.clear();
        while state.finish.is_none() {
            state = self.shared.wait(state);
        }
    }

    /// Counts what is left as dropped and tells `finish` the worker is done.
    fn close(&self) {
        let mut state = self.shared.lock();
        let left = state.drop_pending();
        if left > 0 {
            tracing::warn!(
                uri = %self.client.base,
                dropped = left,
                "MLflow: metric points not sent before the finish wait ran out"
            );
        }
        state.off = true;
        state.done = true;
        drop(state);
        self.shared.notify();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
