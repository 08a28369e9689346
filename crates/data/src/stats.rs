//! Per-source counters. They live in the stream state, so they describe exactly the batches
//! consumed so far (also across a resume).

use serde::{Deserialize, Serialize};

/// Counters for one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceStats {
    /// Documents fully consumed.
    pub documents: u64,
    /// Rows emitted.
    pub rows: u64,
    /// Real (non-pad) tokens emitted.
    pub tokens: u64,
    /// Pad tokens emitted (corenet mode).
    pub pad_tokens: u64,
    /// Emitted tokens that are never targets: the prompts of `loss_on: response` sources.
    pub prompt_tokens: u64,
    /// Pieces dropped by the corenet filters, plus empty documents in packed mode.
    pub dropped_pieces: u64,
    /// Records skipped as unusable.
    pub bad_records: u64,
    /// Files skipped (wholly or in part) as unreadable.
    pub bad_files: u64,
    /// Completed passes over this process's part of the source.
    pub epochs: u64,
    /// Documents passed over because they are held back for validation (`hold_back`).
    pub held_back: u64,
    /// Preference pairs skipped because their prompt is over `max_prompt_tokens` (or fills
    /// the row).
    pub long_prompts: u64,
}

impl SourceStats {
    /// Fraction of emitted slots that are padding.
    pub fn pad_fraction(&self) -> f64 {
        let total = self.tokens + self.pad_tokens;
        if total == 0 {
            0.0
        } else {
            self.pad_tokens as f64 / total as f64
        }
    }

    /// Adds another process's counters.
    pub fn add(&mut self, o: &SourceStats) {
        self.documents += o.documents;
        self.rows += o.rows;
        self.tokens += o.tokens;
        self.pad_tokens += o.pad_tokens;
        self.prompt_tokens += o.prompt_tokens;
        self.dropped_pieces += o.dropped_pieces;
        self.bad_records += o.bad_records;
        self.bad_files += o.bad_files;
        self.epochs += o.epochs;
        self.held_back += o.held_back;
        self.long_prompts += o.long_prompts;
    }
}
