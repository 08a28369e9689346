//! Starting a run's checkpoint, from every rank: rank 0 collects every rank's data-stream
//! position through the store, each rank copies its own part of the state to host memory
//! ([`take_snapshot`]), and the [`CheckpointWriter`] writes and commits it (in the background
//! when the recipe asks).

use std::time::Instant;

use corenet_data::StreamState;
use corenet_model::{AdapterRecord, OpenElm};

use crate::checkpoint::contents::{TokenizerFile, TrainState};
use crate::checkpoint::snapshot::{take_snapshot, SnapshotOf};
use crate::checkpoint::store::VALIDATION_LOSS_KEY;
use crate::checkpoint::writer::{CheckpointWriter, FaultKind, SaveJob, SaveRecord};
use crate::dist::DataParallel;
use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::step::reference::{ReferenceRecord, REFERENCE_KEY};

/// What a save writes besides the model and optimizer.
pub(crate) struct SaveParts<'a> {
    pub tokenizer: &'a TokenizerFile,
    pub state: &'a TrainState,
    /// The validation loss measured at this step, if any (the store's `best` competes on it).
    pub validation_loss: Option<f64>,
    /// Test hook: what goes wrong with this rank's write.
    pub fault: Option<FaultKind>,
    /// A PEFT run's adapters record.
    pub adapters: Option<&'a AdapterRecord>,
    /// A DPO run's reference record (in the manifest's metadata).
    pub reference: Option<&'a ReferenceRecord>,
}

/// Starts a checkpoint of `state` (atomic: the old ones stay until it is durable). Every rank
/// of a data-parallel run must call it; the save before it must be finished. `began` is when
/// the step loop stopped for it. A foreground save returns its outcome; a background one
/// `None` (the writer reports it later).
pub(crate) fn start_save(
    writer: &mut CheckpointWriter,
    (model, optim): (&OpenElm, &Optimizer),
    dp: Option<&DataParallel>,
    parts: SaveParts<'_>,
    began: Instant,
) -> Result<Option<Result<SaveRecord>>> {
    let (rank, world) = dp.map_or((0, 1), |dp| (dp.rank(), dp.world_size()));
    let state = match dp {
        Some(dp) => with_every_rank_position(dp, parts.state)?,
        None => Some(parts.state.clone()),
    };
    let snapshot = take_snapshot(SnapshotOf {
        model,
        optim,
        rank,
        world,
        root: state.as_ref().map(|s| (parts.tokenizer, s)),
        adapters: parts.adapters,
    })?;
    let job = SaveJob {
        step: parts.state.step,
        snapshot,
        metadata: metadata(parts.state, parts.validation_loss, world, parts.reference),
        fault: parts.fault,
    };
    Ok(writer.start(job, began))
}

/// Rank 0 gets the state with every rank's stream position (`Some`); the others `None`.
fn with_every_rank_position(dp: &DataParallel, state: &TrainState) -> Result<Option<TrainState>> {
    let own = state.data.to_json()?;
    let Some(all) = dp.gather_to_root("data_state", own.as_bytes())? else {
        return Ok(None);
    };
    let data_ranks = all
        .iter()
        .enumerate()
        .map(|(rank, bytes)| {
            StreamState::from_json(&String::from_utf8_lossy(bytes)).map_err(|e| Error::Dist {
                op: "gather data state".into(),
                message: format!("rank {rank}'s data-stream state: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut state = state.clone();
    state.data = data_ranks[0].clone();
    state.data_ranks = data_ranks;
    Ok(Some(state))
}

fn metadata(
    state: &TrainState,
    validation_loss: Option<f64>,
    world: usize,
    reference: Option<&ReferenceRecord>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut metadata = serde_json::Map::new();
    if let Some(value) = reference.and_then(|r| serde_json::to_value(r).ok()) {
        metadata.insert(REFERENCE_KEY.into(), value);
    }
    metadata.insert("recipe_hash".into(), state.recipe_hash.clone().into());
    if let Some(loss) = validation_loss.filter(|l| l.is_finite()) {
        metadata.insert(VALIDATION_LOSS_KEY.into(), loss.into());
    }
    if world > 1 {
        metadata.insert("world_size".into(), world.into());
        // Which part each file holds (optimizer.index.json has the exact ranges).
        metadata.insert("layout".into(), "per-rank".into());
    }
    metadata
}
