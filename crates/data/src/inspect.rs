//! What `corenet data stats` and `corenet data peek` print: run the stream a little and report.

use serde::Serialize;

use crate::config::DataConfig;
use crate::error::Result;
use crate::stats::SourceStats;
use crate::stream::DataStream;
use crate::tokenizer::load_tokenizer;

/// Counters per source after some batches.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub batches: usize,
    pub sources: Vec<(String, SourceStats)>,
    /// Seconds the batches took (including start-up).
    pub seconds: f64,
}

impl StatsReport {
    /// Real tokens per second over the run.
    pub fn tokens_per_second(&self) -> f64 {
        let tokens: u64 = self.sources.iter().map(|(_, s)| s.tokens).sum();
        tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Runs rank 0 of 1 for `batches` batches and returns the per-source counters.
pub fn collect_stats(config: &DataConfig, batches: usize) -> Result<StatsReport> {
    let t0 = std::time::Instant::now();
    let mut stream = DataStream::open(config, 0, 1, None)?;
    let mut done = 0;
    for b in stream.by_ref().take(batches) {
        b?;
        done += 1;
    }
    let names = stream.state().source_names.clone();
    Ok(StatsReport {
        batches: done,
        sources: names.into_iter().zip(stream.stats()).collect(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One decoded row.
#[derive(Debug, Clone, Serialize)]
pub struct PeekRow {
    pub batch: usize,
    pub row: usize,
    pub source: String,
    pub tokens: Vec<u32>,
    /// Ids of the row that are prompt, never targets (`loss_on: response`).
    pub prompt_ids: usize,
    /// Per id of `tokens`: whether it is prompt (empty when none is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<bool>,
    pub text: String,
}

/// Decodes the rows of the first `batches` batches of rank 0 (pad ids left out of the text).
pub fn peek(config: &DataConfig, batches: usize) -> Result<Vec<PeekRow>> {
    let tokenizer = load_tokenizer(&config.tokenizer)?;
    let pad = tokenizer.pad_id();
    let stream = DataStream::open(config, 0, 1, None)?;
    let mut rows = Vec::new();
    for (bi, batch) in stream.take(batches).enumerate() {
        let batch = batch?;
        for r in 0..batch.micro_batch {
            let tokens = batch.row(r).to_vec();
            let w = batch.seq_len + 1;
            let prompt = batch
                .prompt
                .get(r * w..(r + 1) * w)
                .map_or_else(Vec::new, <[bool]>::to_vec);
            let prompt_ids = prompt.iter().filter(|&&b| b).count();
            let real: Vec<u32> = tokens.iter().copied().filter(|&t| t != pad).collect();
            let source = batch
                .state
                .source_names
                .get(batch.row_sources[r])
                .cloned()
                .unwrap_or_default();
            rows.push(PeekRow {
                batch: bi,
                row: r,
                source,
                text: tokenizer.decode(&real)?,
                tokens,
                prompt_ids,
                prompt,
            });
        }
    }
    Ok(rows)
}
