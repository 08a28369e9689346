//! The serialisable stream position. Restoring it reproduces the rest of the stream exactly,
//! and it is O(1) in the data: a few integers per source and worker (plus counters).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::read::Position;
use crate::rng::Rng;
use crate::stats::SourceStats;

/// Where one worker stands in one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub epoch: u64,
    /// Index into this worker's file plan for `epoch`.
    pub file: u64,
    /// Start of the current document (or of the next record); `None` = start of the file.
    pub record: Option<Position>,
    /// Byte offset in the current document where the current piece starts.
    pub piece_start: u64,
    /// Tokens of the current piece already emitted: the packer's leftover is the rest of that
    /// piece, recomputed on resume by tokenizing that one piece again.
    pub token_offset: u64,
    /// Whether this epoch produced any tokens yet (an epoch that yields nothing is an error,
    /// not an endless loop).
    pub progressed: bool,
}

/// One worker's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    pub worker: usize,
    /// Batches this worker has produced.
    pub batches: u64,
    /// The source-mixing generator.
    pub mixer: Rng,
    pub sources: Vec<SourceState>,
    pub stats: Vec<SourceStats>,
}

/// The whole stream of one rank, as of right after a given batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub version: u32,
    pub rank: usize,
    pub world_size: usize,
    pub seed: u64,
    /// Source names, to catch a state restored into a different mixture.
    pub source_names: Vec<String>,
    /// Worker whose batch comes next (batches go round-robin over workers, like CoreNet).
    pub next_worker: usize,
    pub workers: Vec<WorkerState>,
}

/// Current state format.
pub const STATE_VERSION: u32 = 1;

impl StreamState {
    /// Checks that this state belongs to a stream with this layout.
    pub fn check_layout(
        &self,
        rank: usize,
        world_size: usize,
        workers: usize,
        seed: u64,
        names: &[String],
    ) -> Result<()> {
        let mismatch = |what: &str, saved: String, now: String| {
            Err(Error::StateMismatch(format!(
                "{what}: saved {saved}, configured {now}"
            )))
        };
        if self.version != STATE_VERSION {
            return mismatch(
                "version",
                self.version.to_string(),
                STATE_VERSION.to_string(),
            );
        }
        if (self.rank, self.world_size) != (rank, world_size) {
            return mismatch(
                "rank/world",
                format!("{}/{}", self.rank, self.world_size),
                format!("{rank}/{world_size}"),
            );
        }
        if self.workers.len() != workers || self.next_worker >= workers {
            return mismatch(
                "workers",
                self.workers.len().to_string(),
                workers.to_string(),
            );
        }
        if self.seed != seed {
            return mismatch("seed", self.seed.to_string(), seed.to_string());
        }
        if self.source_names != names || self.workers.iter().any(|w| w.sources.len() != names.len())
        {
            return mismatch(
                "sources",
                format!("{:?}", self.source_names),
                format!("{names:?}"),
            );
        }
        Ok(())
    }

    /// Per-source counters summed over workers.
    pub fn stats(&self) -> Vec<SourceStats> {
        let mut total = vec![SourceStats::default(); self.source_names.len()];
        for w in &self.workers {
            for (t, s) in total.iter_mut().zip(&w.stats) {
                t.add(s);
            }
        }
        total
    }

    /// Re-partitions the positions of an N-rank run (`states`, one per rank in rank order) for
    /// `rank` of `world` ranks with `workers` workers each.
    ///
    /// Each worker reads a fixed share of every source, the one of scaled rank
    /// `rank × workers + worker` of `world_size × workers`, so a position carries over exactly
    /// when the number of shares stays the same (N × W = M × W': 2 ranks of 1 worker become 1
    /// rank of 2 workers) and every share has produced the same number of batches (true at a
    /// step boundary when each rank's micro-batches per step are a multiple of its workers).
    pub fn repartition(
        states: &[StreamState],
        rank: usize,
        world: usize,
        workers: usize,
    ) -> Result<StreamState> {
        let first = states
            .first()
            .ok_or_else(|| Error::StateMismatch("no saved positions to re-partition".into()))?;
        let (old_world, old_workers) = (states.len(), first.workers.len());
        let mismatch = |reason: String| Err(Error::StateMismatch(reason));
        for (i, s) in states.iter().enumerate() {
            if (s.rank, s.world_size, s.workers.len()) != (i, old_world, old_workers)
                || s.seed != first.seed
                || s.source_names != first.source_names
            {
                return mismatch(format!(
                    "saved position {i} is rank {}/{} with {} workers, inconsistent with the others",
                    s.rank,
                    s.world_size,
                    s.workers.len()
                ));
            }
        }
        let shares = old_world * old_workers;
        if world * workers != shares || rank >= world {
            let hint = if shares % world == 0 {
                format!("set data.workers={} to keep them", shares / world)
            } else {
                format!("{world} rank(s) cannot hold them evenly")
            };
            return mismatch(format!(
                "the data was read as {shares} shares ({old_world} rank(s) × {old_workers} workers) and {world} rank(s) × {workers} workers make {}: {hint}",
                world * workers
            ));
        }
        let batches = first.workers[0].batches;
        if states
            .iter()
            .any(|s| s.next_worker != 0 || s.workers.iter().any(|w| w.batches != batches))
        {
            return mismatch(
                "the shares stopped at different batch counts (micro-batches per step not a multiple of the workers), so no re-partition reproduces the batch order".into(),
            );
        }
        let workers = (0..workers)
            .map(|w| {
                let scaled = rank * workers + w;
                let mut state = states[scaled / old_workers].workers[scaled % old_workers].clone();
                state.worker = w;
                state
            })
            .collect();
        Ok(StreamState {
            version: first.version,
            rank,
            world_size: world,
            seed: first.seed,
            source_names: first.source_names.clone(),
            next_worker: 0,
            workers,
        })
    }

    /// JSON form, for checkpoints.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::StateMismatch(format!("cannot serialise state: {e}")))
    }

    /// Reads the JSON form.
    pub fn from_json(s: &str) -> Result<StreamState> {
        serde_json::from_str(s)
            .map_err(|e| Error::StateMismatch(format!("cannot parse state: {e}")))
    }
}
