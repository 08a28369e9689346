//! One worker: mixes its sources row by row and assembles batches. Deterministic given its
//! state, so it can run on any thread.

use std::sync::Arc;

use crate::config::Mode;
use crate::error::Result;
use crate::mixer::Mixer;
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::shard::Shard;
use crate::source_stream::SourceStream;
use crate::state::{SourceState, WorkerState};
use crate::stats::SourceStats;

/// A batch as a worker hands it over.
pub struct WorkerBatch {
    pub tokens: Vec<u32>,
    /// Per id of `tokens`: a prompt token, never a target. Empty when there is none.
    pub prompt: Vec<bool>,
    pub row_sources: Vec<usize>,
    pub state: WorkerState,
}

/// Produces batches for one (rank, worker) slot.
pub struct Worker {
    pipe: Arc<Pipeline>,
    worker: usize,
    batches: u64,
    rng: Rng,
    mixer: Mixer,
    sources: Vec<SourceStream>,
}

impl Worker {
    /// The initial state of a worker (nothing read yet).
    pub fn initial_state(pipe: &Pipeline, shard: &Shard) -> WorkerState {
        let n = pipe.sources.len();
        WorkerState {
            worker: shard.worker,
            batches: 0,
            mixer: Rng::new(&[pipe.config.seed, 0x006d_6978, shard.scaled_rank() as u64]),
            sources: vec![SourceState::default(); n],
            stats: vec![SourceStats::default(); n],
        }
    }

    /// A worker continuing from `state`.
    pub fn new(pipe: Arc<Pipeline>, shard: Shard, state: WorkerState) -> Worker {
        let weights: Vec<f64> = pipe.sources.iter().map(|s| s.weight).collect();
        let sources = state
            .sources
            .into_iter()
            .zip(state.stats)
            .enumerate()
            .map(|(i, (st, stats))| SourceStream::new(i, shard, Arc::clone(&pipe), st, stats))
            .collect();
        Worker {
            pipe,
            worker: shard.worker,
            batches: state.batches,
            rng: state.mixer,
            mixer: Mixer::new(&weights),
            sources,
        }
    }

    /// The next batch and the worker state right after it.
    pub fn next_batch(&mut self) -> Result<WorkerBatch> {
        let rows = self.pipe.config.micro_batch;
        let mut tokens = Vec::with_capacity(rows * self.pipe.row_len());
        let mut prompt = Vec::with_capacity(rows * self.pipe.row_len());
        let mut row_sources = Vec::with_capacity(rows);
        // A pair's two rows come from one record, so a source is drawn per pair.
        let group = match self.pipe.config.mode {
            Mode::Pairs => 2,
            _ => 1,
        };
        for _ in 0..rows / group {
            let s = self.mixer.pick(&mut self.rng);
            for _ in 0..group {
                self.sources[s].next_row(&mut tokens, &mut prompt)?;
                row_sources.push(s);
            }
        }
        if !prompt.contains(&true) {
            prompt.clear();
        }
        self.batches += 1;
        Ok(WorkerBatch {
            tokens,
            prompt,
            row_sources,
            state: self.state(),
        })
    }

    /// The current state.
    pub fn state(&self) -> WorkerState {
        WorkerState {
            worker: self.worker,
            batches: self.batches,
            mixer: self.rng,
            sources: self.sources.iter().map(|s| s.state.clone()).collect(),
            stats: self.sources.iter().map(|s| s.stats.clone()).collect(),
        }
    }
}
