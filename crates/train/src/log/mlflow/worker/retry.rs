//! Requests sent until answered: a transient failure (no connection, a timeout, HTTP 408, 429
//! or 5xx) is retried with exponential backoff, and an outage is logged once when it starts
//! and once when it ends. After `finish`, retries stop at its deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Stop, Worker};
use crate::log::mlflow::client::{CallError, Client, Rejection, REQUEST_TIMEOUT};
use crate::log::mlflow::state::State;

pub(super) const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a request ended after its retries.
pub(super) enum Sent {
    Answer(Value),
    Rejected(Rejection),
    /// The finish wait ran out first.
    OutOfTime,
}

impl Sent {
    /// The answer; a rejection switches the sink off.
    pub(super) fn required(self, endpoint: &str) -> Result<Value, Stop> {
        match self {
            Sent::Answer(answer) => Ok(answer),
            Sent::Rejected(r) => Err(Stop::Off(format!("{endpoint}: {r}"))),
            Sent::OutOfTime => Err(Stop::OutOfTime),
        }
    }
}

impl Worker {
    /// Runs `call` until it is answered, retrying transient failures with backoff, or until the
    /// deadline passes.
    pub(super) fn send(
        &mut self,
        call: impl Fn(&Client, Duration) -> Result<Value, CallError>,
    ) -> Sent {
        loop {
            let Some(timeout) = self.request_timeout() else {
                return Sent::OutOfTime;
            };
            match call(&self.client, timeout) {
                Ok(answer) => {
                    self.reachable();
                    return Sent::Answer(answer);
                }
                Err(CallError::Rejected(rejection)) => {
                    self.reachable();
                    return Sent::Rejected(rejection);
                }
                Err(CallError::Transient(error)) => {
                    self.unreachable(&error);
                    if !self.sleep_backoff() {
                        return Sent::OutOfTime;
                    }
                }
            }
        }
    }

    /// The deadline requests must meet: none until `finish`, then its deadline (or the end
    /// request's grace, whichever is later).
    fn deadline(&self, state: &State) -> Option<Instant> {
        let finish = state.finish?.deadline;
        Some(self.grace_until.map_or(finish, |g| g.max(finish)))
    }

    /// The next request's timeout, clamped to the time left; None when none is left.
    fn request_timeout(&self) -> Option<Duration> {
        let Some(deadline) = self.deadline(&self.shared.lock()) else {
            return Some(REQUEST_TIMEOUT);
        };
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .map(|left| left.min(REQUEST_TIMEOUT))
    }

    fn reachable(&mut self) {
        if self.outage_failures > 0 {
            tracing::info!(uri = %self.client.base, failed_requests = self.outage_failures, "MLflow is reachable again");
        }
        self.outage_failures = 0;
        self.backoff = BACKOFF_START;
    }

    fn unreachable(&mut self, error: &str) {
        if self.outage_failures == 0 {
            tracing::warn!(uri = %self.client.base, error = %error, "MLflow request failed; buffering metrics and retrying");
        }
        self.outage_failures += 1;
        self.shared.lock().failed_requests += 1;
    }

    /// Waits out the backoff; false when the deadline came first.
    fn sleep_backoff(&mut self) -> bool {
        let until = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let mut state = self.shared.lock();
        loop {
            let now = Instant::now();
            let deadline = self.deadline(&state);
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let wake_at = deadline.map_or(until, |d| d.min(until));
            if now >= wake_at {
                return true;
            }
            state = self.shared.wait_timeout(state, wake_at - now);
        }
    }
}
