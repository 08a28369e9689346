//! The serialisable stream position. Restoring it reproduces the rest of the stream exactly,
//! and it is O(1) in the data: a few integers per source and worker (plus counters).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::read::Position;
use crate::rng::Rng;
use crate::shard::Shard;
use crate::shard_list::{FileStamp, ShardList};
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
    /// The shard files the stream read, so a resume can tell whether they changed
    /// ([`ShardList::check_resume`]). Recorded by the caller on one rank only
    /// ([`crate::DataStream::set_files`]; the trainer uses rank 0): every rank resolves the same
    /// sorted lists, and one copy spares the checkpoint `world_size` copies and the file system
    /// `world_size` times the fingerprint reads. `None` on other ranks and in states saved
    /// before the lists were recorded (which still load).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "shared")]
    pub files: Option<Arc<ShardList>>,
}

/// Serde for the shared file list: an `Arc` so that the batches, which each carry a state, do
/// not copy the list (without serde's `rc` feature, which would rebuild every serde user).
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::shard_list::ShardList;

    pub fn serialize<S: Serializer>(
        files: &Option<Arc<ShardList>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        files.as_deref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<ShardList>>, D::Error> {
        Ok(Option::<ShardList>::deserialize(d)?.map(Arc::new))
    }
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
        let new_workers = (0..workers)
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
            workers: new_workers,
            // Like the original states: the file list stays with rank 0 alone.
            files: if rank == 0 { first.files.clone() } else { None },
        })
    }

    /// Moves the positions of a state saved over the files `saved` onto the files `now`, after
    /// a change was accepted. Every worker keeps its epoch, its index into its epoch's file
    /// plan (recomputed over the new list) and its counters. Where the file at that index is
    /// the same as before (path, size, fingerprint) and read the same way, the position inside
    /// it is kept; otherwise the worker starts that file from its beginning, since a record
    /// offset means nothing in another file. The recorded list is left alone: the rank that
    /// records lists records the new one ([`crate::DataStream::set_files`]).
    pub fn adopt_files(&mut self, saved: &ShardList, now: &ShardList) {
        let (rank, world_size, workers, seed) =
            (self.rank, self.world_size, self.workers.len(), self.seed);
        for (worker, ws) in self.workers.iter_mut().enumerate() {
            let shard = Shard {
                rank,
                world_size,
                worker,
                workers,
            };
            for (index, (name, st)) in self.source_names.iter().zip(&mut ws.sources).enumerate() {
                let current = |files: &[FileStamp]| {
                    let plan = shard.epoch_plan(files.len(), seed, index, st.epoch);
                    plan.get(st.file as usize)
                        .map(|&(f, stride)| (files[f].clone(), stride))
                };
                let (before, after) = (current(saved.files(name)), current(now.files(name)));
                let inside = st.record.is_some() || st.piece_start > 0 || st.token_offset > 0;
                if before != after && inside {
                    tracing::warn!(source = %name, rank, worker, epoch = st.epoch, file = st.file, "the file this worker was reading is another one now; it starts that file from the beginning");
                    st.record = None;
                    st.piece_start = 0;
                    st.token_offset = 0;
                }
            }
        }
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
