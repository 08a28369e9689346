//! Saving a run's checkpoint, from every rank: the optimizer state is gathered (a collective
//! for ZeRO-1), rank 0 collects every rank's data-stream position through the store, writes
//! the checkpoint alone, and every rank learns the outcome (rank 0's failure is an error on
//! every rank).

use tch::Tensor;

use corenet_data::StreamState;
use corenet_model::OpenElm;

use crate::checkpoint::contents::{write_checkpoint, TokenizerFile, TrainState};
use crate::checkpoint::store::{CheckpointStore, VALIDATION_LOSS_KEY};
use crate::dist::DataParallel;
use crate::error::{Error, Result};
use crate::optim::Optimizer;

/// What a save writes besides the model and optimizer.
pub(crate) struct SaveParts<'a> {
    pub tokenizer: &'a TokenizerFile,
    pub state: &'a TrainState,
    /// The validation loss measured at this step, if any (the store's `best` competes on it).
    pub validation_loss: Option<f64>,
}

/// Writes a checkpoint of `state` (atomically; the old ones stay until it is durable). Every
/// rank of a data-parallel run must call it.
pub(crate) fn save_checkpoint(
    store: &CheckpointStore,
    model: &OpenElm,
    optim: &Optimizer,
    dp: Option<&DataParallel>,
    parts: SaveParts<'_>,
) -> Result<()> {
    let SaveParts {
        tokenizer,
        state,
        validation_loss,
    } = parts;
    let optimizer = optim.checkpoint_tensors(dp)?;
    let Some(dp) = dp else {
        return write(
            store,
            model,
            (tokenizer, validation_loss),
            state,
            &optimizer.unwrap_or_default(),
        );
    };
    let own = state.data.to_json()?;
    let gathered = dp.gather_to_root("data_state", own.as_bytes())?;
    let outcome = gathered.map(|all| -> Result<()> {
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
        write(
            store,
            model,
            (tokenizer, validation_loss),
            &state,
            optimizer.as_deref().unwrap_or_default(),
        )
    });
    let shared = dp.share_result(
        "save checkpoint",
        outcome
            .as_ref()
            .map(|r| r.as_ref().map(|()| Vec::new()).map_err(ToString::to_string)),
    );
    if let Some(outcome) = outcome {
        outcome?;
    }
    shared?;
    Ok(())
}

fn write(
    store: &CheckpointStore,
    model: &OpenElm,
    (tokenizer, validation_loss): (&TokenizerFile, Option<f64>),
    state: &TrainState,
    optimizer: &[(String, Tensor)],
) -> Result<()> {
    let mut metadata = serde_json::Map::new();
    metadata.insert("recipe_hash".into(), state.recipe_hash.clone().into());
    if let Some(loss) = validation_loss.filter(|l| l.is_finite()) {
        metadata.insert(VALIDATION_LOSS_KEY.into(), loss.into());
    }
    if !state.data_ranks.is_empty() {
        metadata.insert("world_size".into(), state.data_ranks.len().into());
    }
    // The store logs the save once it is durable.
    store.save(state.step, metadata, |dir| {
        write_checkpoint(dir, model, optimizer, tokenizer, state)
    })?;
    Ok(())
}
