//! What a checkpoint holds: `model.safetensors` (HF tensor names), `optimizer.safetensors`
//! (per-parameter AdamW state) — or, written by several ranks, their per-rank parts
//! ([`crate::checkpoint::rank_parts`]) — the model's config, the run's tokenizer (`tokenizer.json` or
//! `tokenizer.model`, byte for byte), and `train_state.json` — counters, the data-stream
//! position and the recipe hash (and, for data-parallel runs, every rank's data-stream
//! position). With model, config and tokenizer inside, a checkpoint is exported, evaluated or
//! sampled from on its own.

use std::path::Path;

use serde::{Deserialize, Serialize};

use corenet_data::{resolve_tokenizer, tokenizer_in_folder, StreamState, TokenizerKind};
use corenet_model::OpenElm;

use crate::checkpoint::rank_parts::{FlatSource, OptimizerIndex};
use crate::error::{Error, Result};
use crate::optim::Optimizer;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "train_state.json";
/// The model's config (CoreNet field names), so a checkpoint can be exported or loaded alone.
pub const MODEL_CONFIG_FILE: &str = corenet_model::pretrained::MODEL_CONFIG_FILE;
pub const STATE_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps taken or skipped; the LR schedule's position.
    pub step: u64,
    /// Updates actually applied (skipped steps do not advance AdamW's bias correction).
    pub optimizer_steps: u64,
    pub tokens_seen: u64,
    pub skipped_steps: u64,
    pub consecutive_bad: u32,
    /// Where the data stream continues (rank 0's stream in a data-parallel run).
    pub data: StreamState,
    /// Every rank's stream position, indexed by rank, when the checkpoint was written by a
    /// data-parallel run of more than one rank; empty for single-process runs (so their
    /// `train_state.json` keeps its earlier form and older checkpoints still load).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_ranks: Vec<StreamState>,
    pub recipe_hash: String,
    /// The model's seed. Nothing draws from libtorch's RNG after initialisation (no dropout), so
    /// weights + this are the whole random state; the data stream carries its own.
    pub seed: u64,
    /// Seconds the run's processes spent from start-up to this checkpoint, summed over resumes
    /// (the metrics' `elapsed_s` continues from it). Older checkpoints lack it: 0.
    #[serde(default)]
    pub elapsed_s: f64,
}

impl TrainState {
    /// The state of a run that has not taken a step, its data stream at `data`.
    pub fn fresh(data: StreamState, recipe_hash: String, seed: u64) -> Self {
        TrainState {
            format_version: STATE_FORMAT_VERSION,
            step: 0,
            optimizer_steps: 0,
            tokens_seen: 0,
            skipped_steps: 0,
            consecutive_bad: 0,
            data,
            data_ranks: Vec::new(),
            recipe_hash,
            seed,
            elapsed_s: 0.0,
        }
    }
}

/// The run's tokenizer file, read once when the run starts: every checkpoint then carries the
/// tokenizer its ids came from, even if the file is edited or removed during the run.
#[derive(Debug, Clone)]
pub struct TokenizerFile {
    pub kind: TokenizerKind,
    pub bytes: Vec<u8>,
    /// The chat template of a run that trains on `template: chat` sources, written next to
    /// the tokenizer as [`CHAT_TEMPLATE_FILE`] (what `model export` ships and `generate --chat`
    /// applies).
    pub chat_template: Option<String>,
}

/// A checkpoint's chat template (Jinja, as HF tokenizers carry it).
pub const CHAT_TEMPLATE_FILE: &str = corenet_data::template::CHAT_TEMPLATE_FILE;

impl TokenizerFile {
    /// Reads the tokenizer `path` names (a file, or a folder holding one).
    pub fn read(path: &Path) -> Result<Self> {
        let (file, kind) = resolve_tokenizer(path)?;
        let bytes = std::fs::read(&file).map_err(|e| Error::io("read", &file, e))?;
        Ok(TokenizerFile {
            kind,
            bytes,
            chat_template: None,
        })
    }

    /// Checks that the checkpoint in `dir` was trained with this tokenizer: a changed tokenizer
    /// gives the same ids other meanings mid-run. A checkpoint written before tokenizers were
    /// carried passes; with `accept`, a difference is logged and the run goes on.
    pub fn check_same_as(&self, dir: &Path, accept: bool) -> Result<()> {
        let Some(path) = tokenizer_in_folder(dir) else {
            return Ok(());
        };
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        if bytes == self.bytes {
            return Ok(());
        }
        if accept {
            tracing::warn!(checkpoint = %dir.display(), "data.tokenizer differs from the tokenizer the checkpoint was trained with; continuing (--accept-data-change)");
            return Ok(());
        }
        Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "was trained with another tokenizer than `data.tokenizer` ({} differs): the ids \
                 would change meaning mid-run. Restore the tokenizer (the checkpoint's copy is \
                 {}), or pass --accept-data-change to go on with the new one",
                self.kind.file_name(),
                path.display()
            ),
        })
    }

    /// Writes the file into `dir` under its kind's name (`tokenizer.json` or `tokenizer.model`).
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        let path = dir.join(self.kind.file_name());
        std::fs::write(&path, &self.bytes).map_err(|e| Error::io("write", &path, e))
    }
}

/// Restores model and optimizer from `dir` and returns its state.
pub fn read_checkpoint(dir: &Path, model: &OpenElm, optim: &mut Optimizer) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| Error::Json {
        path: path.clone(),
        source: e,
    })?;
    if state.format_version > STATE_FORMAT_VERSION {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "state format {} is newer than this build ({STATE_FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    match OptimizerIndex::read(dir)? {
        // The per-rank layout: each rank reads only the optimizer ranges it owns now.
        Some(index) => {
            model.load_trainable_files(&corenet_model::pretrained::weight_files(dir)?)?;
            let source = FlatSource::open(dir, index)?;
            optim.load_flat(&source, state.optimizer_steps)?;
        }
        None => {
            model.load_trainable_files(&[dir.join(MODEL_FILE)])?;
            optim.load_file(&dir.join(OPTIMIZER_FILE), state.optimizer_steps)?;
        }
    }
    Ok(state)
}

/// A checkpoint's tensors, whichever layout wrote it (single-file or per-rank).
#[derive(Debug)]
pub struct CheckpointTensors {
    /// The model's, by HF name, sorted.
    pub model: Vec<(String, tch::Tensor)>,
    /// The optimizer's in the per-parameter layout (`exp_avg.NAME`, `exp_avg_sq.NAME`,
    /// `master.NAME`), sorted.
    pub optimizer: Vec<(String, tch::Tensor)>,
}

/// Reads every tensor of the checkpoint in `dir` onto the CPU (to compare checkpoints written
/// on different world sizes, or to consolidate the per-rank layout).
pub fn read_tensors(dir: &Path) -> Result<CheckpointTensors> {
    let mut model = Vec::new();
    for file in corenet_model::pretrained::weight_files(dir)? {
        model.extend(corenet_model::load_tensors(&file)?);
    }
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let mut optimizer = match OptimizerIndex::read(dir)? {
        Some(index) => FlatSource::open(dir, index)?.per_parameter()?,
        None => corenet_model::load_tensors(&dir.join(OPTIMIZER_FILE))?,
    };
    optimizer.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(CheckpointTensors { model, optimizer })
}
