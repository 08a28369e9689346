//! What the trainer's side and the worker share: the queue of metric points, the tags to send,
//! the finish request and the counters, under one mutex with a condvar to wake the other side.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::batch::Point;
use super::config::RunStatus;

/// Metric points buffered while the server is away; past this the oldest are dropped.
pub const QUEUE_CAPACITY: usize = 100_000;

/// The sink's counters, for the trainer's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MlflowStats {
    /// `runs/log-batch` requests MLflow accepted (params, tags and metrics).
    pub sent_batches: u64,
    /// Requests that failed and were retried (no connection, timeout, HTTP 429 or 5xx).
    pub failed_requests: u64,
    /// Metric points queued or in flight.
    pub pending_metrics: u64,
    /// Metric points given up on: the queue overflowed, MLflow rejected their batch, the sink
    /// was switched off, or [`MlflowSink::finish`](super::MlflowSink::finish)'s wait ran out.
    pub dropped_metrics: u64,
}

/// What `finish` asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Finish {
    pub(super) status: RunStatus,
    pub(super) deadline: Instant,
}

/// What the trainer's side and the worker share.
#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: VecDeque<Point>,
    /// Taken out of the queue by a request not yet answered.
    pub(super) in_flight: usize,
    pub(super) tags: BTreeMap<String, String>,
    pub(super) run_id: Option<String>,
    pub(super) finish: Option<Finish>,
    /// Switched off: nothing is queued any more.
    pub(super) off: bool,
    /// The worker has stopped.
    pub(super) done: bool,
    /// Points dropped since the queue overflowed; 0 while it has room.
    overflow_dropped: u64,
    pub(super) sent_batches: u64,
    pub(super) failed_requests: u64,
    pub(super) dropped_metrics: u64,
}

impl State {
    pub(super) fn stats(&self) -> MlflowStats {
        MlflowStats {
            sent_batches: self.sent_batches,
            failed_requests: self.failed_requests,
            pending_metrics: (self.queue.len() + self.in_flight) as u64,
            dropped_metrics: self.dropped_metrics,
        }
    }

    /// Queues `points`, dropping the oldest past [`QUEUE_CAPACITY`]; all of them when off.
    pub(super) fn push(&mut self, points: impl ExactSizeIterator<Item = Point>) {
        if self.off {
            self.dropped_metrics += points.len() as u64;
            return;
        }
        self.queue.extend(points);
        let excess = self.queue.len().saturating_sub(QUEUE_CAPACITY);
        if excess == 0 {
            return;
        }
        self.queue.drain(..excess);
        self.dropped_metrics += excess as u64;
        if self.overflow_dropped == 0 {
            tracing::warn!(
                capacity = QUEUE_CAPACITY,
                "MLflow queue is full: dropping the oldest metric points until the server takes them again"
            );
        }
        self.overflow_dropped += excess as u64;
    }

    /// The points in flight arrived: the queue has room again if it had overflowed.
    pub(super) fn in_flight_sent(&mut self) {
        self.sent_batches += 1;
        self.in_flight = 0;
        if self.overflow_dropped > 0 {
            tracing::warn!(
                dropped = self.overflow_dropped,
                "MLflow queue has room again; the oldest metric points were dropped"
            );
            self.overflow_dropped = 0;
        }
    }

    /// Counts the points in flight as dropped (MLflow refused their batch).
    pub(super) fn drop_in_flight(&mut self) {
        self.dropped_metrics += self.in_flight as u64;
        self.in_flight = 0;
    }

    /// Counts the points queued and in flight as dropped; returns how many.
    pub(super) fn drop_pending(&mut self) -> u64 {
        let pending = (self.queue.len() + self.in_flight) as u64;
        self.dropped_metrics += pending;
        self.queue.clear();
        self.in_flight = 0;
        pending
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the other side.
    pub(super) fn notify(&self) {
        self.wake.notify_all();
    }

    /// Waits for the other side to notify.
    pub(super) fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.wake
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the other side to notify, at most `timeout`.
    pub(super) fn wait_timeout<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.wake
            .wait_timeout(state, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// No worker: everything logged from now on is dropped, and `finish` returns at once.
    pub(super) fn switch_off(&self) {
        let mut state = self.lock();
        state.off = true;
        state.done = true;
    }

    /// Asks the worker to finish (the first request wins) and waits until it is done, at most
    /// until `give_up`; returns whether it is done, and the counters.
    pub(super) fn finish(&self, finish: Finish, give_up: Instant) -> (bool, MlflowStats) {
        let mut state = self.lock();
        state.finish.get_or_insert(finish);
        self.notify();
        while !state.done {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            state = self.wait_timeout(state, give_up - now);
        }
        (state.done, state.stats())
    }
}
