//! A rank's part of a checkpoint, copied to host memory so that training may go on changing
//! the weights and optimizer state while a background thread writes it.
//!
//! A single process writes the single-file layout (`model.safetensors`, `optimizer.safetensors`
//! with per-parameter tensors). A rank of a larger world copies only what it writes in the
//! per-rank layout ([`crate::checkpoint::rank_parts`]): its run of whole model tensors and its
//! range of the flat optimizer space, about 1/N of the state; rank 0 adds the small files
//! (config, tokenizer, train state, the two indexes).

use std::path::Path;

use corenet_model::{AdapterRecord, OpenElm, RawTensor, ADAPTERS_FILE};
use tch::Tensor;

use crate::checkpoint::contents::{
    TokenizerFile, TrainState, CHAT_TEMPLATE_FILE, MODEL_CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE,
    STATE_FILE,
};
use crate::checkpoint::rank_parts::{
    model_index_json, model_owners, model_part_file, optimizer_part_file, OptimizerIndex,
    MODEL_INDEX_FILE, OPTIMIZER_INDEX_FILE,
};
use crate::error::{Error, Result};
use crate::optim::Optimizer;

/// What one rank writes of a checkpoint, in host memory.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Safetensors files: name and tensors.
    pub tensor_files: Vec<(String, Vec<RawTensor>)>,
    /// Other files (rank 0): name and bytes.
    pub small_files: Vec<(String, Vec<u8>)>,
}

/// Where a rank stands, and what rank 0 adds.
pub(crate) struct SnapshotOf<'a> {
    pub model: &'a OpenElm,
    pub optim: &'a Optimizer,
    pub rank: usize,
    pub world: usize,
    /// Rank 0: the tokenizer and the train state (every rank's stream position in it).
    pub root: Option<(&'a TokenizerFile, &'a TrainState)>,
    /// A PEFT run's record of its adapters and base (rank 0 writes it).
    pub adapters: Option<&'a AdapterRecord>,
}

/// Copies this rank's part of the checkpoint to host memory.
pub(crate) fn take_snapshot(of: SnapshotOf<'_>) -> Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    // A PEFT run's checkpoint holds its adapters (and their moments) only.
    let named = of.model.trainable_parameters();
    // A sharded optimizer has no per-parameter tensors to write, even on one rank.
    if of.world <= 1 && matches!(of.optim, Optimizer::Replicated(_)) {
        snapshot
            .tensor_files
            .push((MODEL_FILE.into(), raw(&named, MODEL_FILE)?));
        let optimizer = of.optim.per_parameter_state()?;
        snapshot
            .tensor_files
            .push((OPTIMIZER_FILE.into(), raw(&optimizer, OPTIMIZER_FILE)?));
    } else {
        let bytes: Vec<usize> = named.iter().map(|(_, t)| tensor_bytes(t)).collect();
        let owners = model_owners(&bytes, of.world);
        let own: Vec<(String, Tensor)> = named
            .iter()
            .zip(&owners)
            .filter(|(_, &owner)| owner == of.rank)
            .map(|((n, t), _)| (n.clone(), t.shallow_clone()))
            .collect();
        let file = model_part_file(of.rank, of.world);
        let tensors = raw(&own, &file)?;
        snapshot.tensor_files.push((file, tensors));

        let layout = of.optim.flat_layout(of.world);
        let file = optimizer_part_file(of.rank, of.world);
        let moments = of.optim.range_state(&layout, of.rank)?;
        let tensors = raw(&moments, &file)?;
        snapshot.tensor_files.push((file, tensors));
        if of.root.is_some() {
            let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
            snapshot.small_files.push((
                MODEL_INDEX_FILE.into(),
                model_index_json(&names, &bytes, &owners, of.world),
            ));
            let index = OptimizerIndex::new(&layout, moments.into_iter().map(|(m, _)| m).collect());
            snapshot
                .small_files
                .push((OPTIMIZER_INDEX_FILE.into(), index.to_json()));
        }
    }
    if let (Some(record), Some(_)) = (of.adapters, of.root) {
        snapshot
            .small_files
            .push((ADAPTERS_FILE.into(), record.to_json()));
    }
    if let Some((tokenizer, state)) = of.root {
        snapshot.small_files.push((
            MODEL_CONFIG_FILE.into(),
            json(MODEL_CONFIG_FILE, of.model.config())?,
        ));
        snapshot
            .small_files
            .push((tokenizer.kind.file_name().into(), tokenizer.bytes.clone()));
        if let Some(template) = &tokenizer.chat_template {
            snapshot
                .small_files
                .push((CHAT_TEMPLATE_FILE.into(), template.clone().into_bytes()));
        }
        snapshot
            .small_files
            .push((STATE_FILE.into(), json(STATE_FILE, state)?));
    }
    Ok(snapshot)
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn raw(tensors: &[(String, Tensor)], file: &str) -> Result<Vec<RawTensor>> {
    tensors
        .iter()
        .map(|(name, t)| Ok(RawTensor::from_tensor(name, t, Path::new(file))?))
        .collect()
}

fn json(file: &str, value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: file.into(),
        source,
    })
}
