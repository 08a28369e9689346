//! A batch of token rows, carrying the stream state right after it.

use crate::state::StreamState;

/// `micro_batch` rows of `seq_len + 1` ids, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// Per id of `tokens`: true for a prompt token of a `loss_on: response` source, which is
    /// an input but never a target. Empty when the batch holds none.
    pub prompt: Vec<bool>,
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Source index of each row.
    pub row_sources: Vec<usize>,
    /// Worker that produced the batch.
    pub worker: usize,
    /// The state to save in a checkpoint taken after training on this batch: the producer
    /// may have prefetched further, but this is where a resumed stream must continue.
    pub state: StreamState,
}

impl Batch {
    /// Row `i`, `seq_len + 1` ids.
    pub fn row(&self, i: usize) -> &[u32] {
        let w = self.seq_len + 1;
        &self.tokens[i * w..(i + 1) * w]
    }

    /// Model inputs as i64, shape `[micro_batch, seq_len]`: each row without its last id.
    pub fn inputs_i64(&self) -> Vec<i64> {
        self.shifted(0)
    }

    /// Targets as i64, shape `[micro_batch, seq_len]`: each row without its first id, prompt
    /// tokens replaced by `ignore` (the loss's ignore index).
    pub fn targets_i64(&self, ignore: i64) -> Vec<i64> {
        let mut targets = self.shifted(1);
        if self.prompt.is_empty() {
            return targets;
        }
        let w = self.seq_len + 1;
        let hidden = self.prompt.chunks(w).flat_map(|r| &r[1..]);
        for (t, &h) in targets.iter_mut().zip(hidden) {
            if h {
                *t = ignore;
            }
        }
        targets
    }

    fn shifted(&self, skip: usize) -> Vec<i64> {
        let w = self.seq_len + 1;
        self.tokens
            .chunks(w)
            .flat_map(|r| r[skip..skip + self.seq_len].iter().map(|&t| t as i64))
            .collect()
    }
}
