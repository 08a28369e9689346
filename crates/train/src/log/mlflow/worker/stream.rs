//! Sending in `runs/log-batch` requests: the params once, then tags and metric points as the
//! sink queues them, until `finish` and an empty queue.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::retry::Sent;
use super::{Stop, Worker};
use crate::log::mlflow::batch::{
    chunks, json_bytes, key_value, Point, MAX_BATCH_BYTES, MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
};
use crate::log::mlflow::client::Rejection;
use crate::log::mlflow::params::prepare_params;

/// What the queue gives the worker next.
enum Next {
    /// Tags go first: they are few, and a later value for a key replaces the earlier one.
    Tags(Vec<Value>),
    /// Up to one request's worth of points, now in flight.
    Points(Vec<Point>),
    /// `finish` came and nothing is left.
    Done,
}

impl Worker {
    /// Logs the params the run lacks; those it holds with another value stay as they are
    /// (MLflow refuses to change a param), with one warning.
    pub(super) fn log_params(
        &mut self,
        run_id: &str,
        params: &[(String, String)],
        logged: &BTreeMap<String, String>,
    ) -> Result<(), Stop> {
        let entries = new_params(run_id, params, logged);
        let mut warned = false;
        for chunk in chunks(
            &entries,
            MAX_PARAMS_TAGS_PER_BATCH,
            MAX_BATCH_BYTES,
            json_bytes,
        ) {
            match self.log_batch(&json!({ "run_id": run_id, "params": chunk })) {
                Sent::Answer(_) => self.shared.lock().sent_batches += 1,
                Sent::Rejected(r) if r.is_final() => {
                    return Err(Stop::Off(format!("runs/log-batch: {r}")))
                }
                Sent::Rejected(r) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(run_id, error = %r, "MLflow refused a batch of params; going on without them");
                    }
                }
                Sent::OutOfTime => return Err(Stop::OutOfTime),
            }
        }
        Ok(())
    }

    /// Sends tags and metric points as they come, until `finish` and an empty queue.
    pub(super) fn stream(&mut self, run_id: &str) -> Result<(), Stop> {
        loop {
            match self.next() {
                Next::Tags(tags) => self.send_tags(run_id, &tags)?,
                Next::Points(points) => self.send_points(run_id, &points)?,
                Next::Done => return Ok(()),
            }
        }
    }

    /// Waits for something to send.
    fn next(&self) -> Next {
        let mut state = self.shared.lock();
        while state.queue.is_empty() && state.tags.is_empty() && state.finish.is_none() {
            state = self.shared.wait(state);
        }
        if !state.tags.is_empty() {
            let tags = std::mem::take(&mut state.tags);
            return Next::Tags(tags.iter().map(|(k, v)| key_value(k, v)).collect());
        }
        if state.queue.is_empty() {
            return Next::Done;
        }
        let n = state.queue.len().min(MAX_METRICS_PER_BATCH);
        let points: Vec<Point> = state.queue.drain(..n).collect();
        state.in_flight = points.len();
        Next::Points(points)
    }

    fn send_points(&mut self, run_id: &str, points: &[Point]) -> Result<(), Stop> {
        let metrics: Vec<Value> = points.iter().map(Point::to_json).collect();
        match self.log_batch(&json!({ "run_id": run_id, "metrics": metrics })) {
            Sent::Answer(_) => self.shared.lock().in_flight_sent(),
            Sent::Rejected(r) => {
                self.shared.lock().drop_in_flight();
                if r.is_final() {
                    return Err(Stop::Off(format!("runs/log-batch: {r}")));
                }
                self.warn_rejected(run_id, &r, points.len());
            }
            // `close` counts the points in flight as dropped.
            Sent::OutOfTime => return Err(Stop::OutOfTime),
        }
        Ok(())
    }

    fn send_tags(&mut self, run_id: &str, tags: &[Value]) -> Result<(), Stop> {
        for chunk in chunks(tags, MAX_PARAMS_TAGS_PER_BATCH, MAX_BATCH_BYTES, json_bytes) {
            match self.log_batch(&json!({ "run_id": run_id, "tags": chunk })) {
                Sent::Answer(_) => self.shared.lock().sent_batches += 1,
                Sent::Rejected(r) if r.is_final() => {
                    return Err(Stop::Off(format!("runs/log-batch: {r}")))
                }
                Sent::Rejected(r) => self.warn_rejected(run_id, &r, 0),
                Sent::OutOfTime => return Err(Stop::OutOfTime),
            }
        }
        Ok(())
    }

    fn log_batch(&mut self, body: &Value) -> Sent {
        self.send(|c, t| c.post("runs/log-batch", body, t))
    }

    fn warn_rejected(&mut self, run_id: &str, rejection: &Rejection, points: usize) {
        if self.rejected_warned {
            tracing::debug!(run_id, error = %rejection, points, "MLflow refused a batch");
        } else {
            self.rejected_warned = true;
            tracing::warn!(run_id, error = %rejection, points, "MLflow refused a batch; dropping it (further refusals are logged at debug level)");
        }
    }
}

/// The params as log-batch entries, less those the run already holds; those it holds with
/// another value are named in one warning.
fn new_params(
    run_id: &str,
    params: &[(String, String)],
    logged: &BTreeMap<String, String>,
) -> Vec<Value> {
    let mut changed = Vec::new();
    let entries: Vec<Value> = prepare_params(params)
        .into_iter()
        .filter(|(k, v)| match logged.get(k) {
            None => true,
            Some(old) if old == v => false,
            Some(_) => {
                changed.push(k.clone());
                false
            }
        })
        .map(|(k, v)| key_value(&k, &v))
        .collect();
    if !changed.is_empty() {
        tracing::warn!(
            run_id,
            params = %changed.join(", "),
            "these params changed since the MLflow run started; MLflow keeps their first values"
        );
    }
    entries
}
