//! Which checkpoint a run resumes from, and where each rank's data stream continues.
//!
//! Rank 0 alone looks at the checkpoint directory and shares its choice, so every rank of a
//! data-parallel run resumes from the same checkpoint even while the directory changes. A
//! checkpoint written on N ranks resumes on M: model and optimizer state always carry over,
//! and the data-stream positions re-partition when the number of data shares stays the same.

use std::path::{Path, PathBuf};

use corenet_data::StreamState;

use corenet_data::remote::ObjectFolder;

use crate::checkpoint::contents::TrainState;
use crate::checkpoint::mirror::fetch_newest;
use crate::checkpoint::store::{CheckpointStore, InvalidCheckpoint};
use crate::dist::DataParallel;
use crate::error::{Error, Result};
use crate::recipe::Recipe;

/// Where a run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// From scratch (`--resume none`). Refused while the run directory holds a checkpoint that
    /// verifies; checkpoints that fail verification are moved to quarantine first.
    #[default]
    Fresh,
    /// From the newest checkpoint that verifies (newer ones that fail are moved to quarantine),
    /// or from scratch when the run has no checkpoint at all. Refused when checkpoints exist
    /// but none verifies: starting over would bury the evidence and the run's progress.
    Auto,
    /// From this checkpoint directory.
    Path(PathBuf),
}

/// Checks that can fail before anything is created: an explicit checkpoint must exist.
pub(crate) fn check_resume_path(resume: &Resume) -> Result<()> {
    if let Resume::Path(dir) = resume {
        if !dir.is_dir() {
            return Err(Error::Checkpoint {
                dir: dir.clone(),
                reason: match dir.exists() {
                    true => {
                        "--resume names a file; give a checkpoint directory (step-XXXXXXXX)".into()
                    }
                    false => "--resume names a directory that does not exist".into(),
                },
            });
        }
    }
    Ok(())
}

/// The checkpoint directory to resume from, if any.
fn resolve_resume(
    store: &CheckpointStore,
    resume: &Resume,
    mirror: Option<&ObjectFolder>,
) -> Result<Option<PathBuf>> {
    match resume {
        Resume::Fresh => {
            let scan = store.scan()?;
            if let Some(valid) = scan.valid {
                return Err(Error::Checkpoint {
                    dir: valid.dir,
                    reason: "the run directory already has checkpoints: resume it (--resume auto) or choose a new run.dir".into(),
                });
            }
            for bad in &scan.invalid {
                store.quarantine(bad)?;
            }
            Ok(None)
        }
        Resume::Auto => {
            let scan = store.scan()?;
            let Some(valid) = scan.valid else {
                if let Some(dir) = mirror
                    .map(|m| fetch_newest(m, store))
                    .transpose()?
                    .flatten()
                {
                    return Ok(Some(dir));
                }
                if scan.invalid.is_empty() {
                    tracing::info!(dir = %store.root().display(), "no checkpoint to resume from; starting fresh");
                    return Ok(None);
                }
                return Err(Error::Checkpoint {
                    dir: store.root().to_path_buf(),
                    reason: format!(
                        "no checkpoint verifies, so the run cannot resume: {}. Nothing was changed; inspect or repair them, resume one explicitly (--resume DIR), or start over with --resume none (moves them to {}/)",
                        describe_invalid(&scan.invalid),
                        super::store::QUARANTINE_DIR,
                    ),
                });
            };
            for bad in &scan.invalid {
                store.quarantine(bad)?;
            }
            if !scan.invalid.is_empty() {
                store.point_latest(valid.step)?;
            }
            Ok(Some(valid.dir))
        }
        Resume::Path(dir) => {
            CheckpointStore::verify(dir)?;
            Ok(Some(dir.clone()))
        }
    }
}

fn describe_invalid(invalid: &[InvalidCheckpoint]) -> String {
    invalid
        .iter()
        .map(|bad| format!("{} ({})", bad.dir.display(), bad.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rank 0 picks the checkpoint (so that every rank resumes from the same one even while the
/// directory changes) and shares its choice; every rank then reads it from the shared file
/// system.
fn agree_resume(
    dp: &DataParallel,
    store: &CheckpointStore,
    resume: &Resume,
    mirror: Option<&ObjectFolder>,
) -> Result<Option<PathBuf>> {
    let choice = (dp.rank() == 0).then(|| resolve_resume(store, resume, mirror));
    let encoded = choice.as_ref().map(|c| match c {
        Ok(dir) => dir
            .as_ref()
            .map_or(Some(String::new()), |d| d.to_str().map(str::to_owned))
            .map(String::into_bytes)
            .ok_or_else(|| "the checkpoint path is not valid UTF-8".to_string()),
        Err(e) => Err(e.to_string()),
    });
    let shared = dp.share_result("choose checkpoint", encoded);
    if let Some(choice) = choice {
        let dir = choice?;
        shared?;
        return Ok(dir);
    }
    let bytes = shared?;
    let path = String::from_utf8_lossy(&bytes).into_owned();
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// This rank's data-stream position from a checkpoint, or `None` to start the stream afresh.
/// Positions saved by N ranks re-partition over M when the number of data shares stays the
/// same (N × workers = M × workers'; [`StreamState::repartition`]); otherwise the run fails
/// with the reason, unless `restart_data` asks to start the stream from the beginning.
fn rank_data_state(
    state: &TrainState,
    dir: &Path,
    rank: usize,
    world: usize,
    recipe: &Recipe,
    restart_data: bool,
) -> Result<Option<StreamState>> {
    let saved = if state.data_ranks.is_empty() {
        std::slice::from_ref(&state.data)
    } else {
        state.data_ranks.as_slice()
    };
    if saved.len() == world {
        return Ok(Some(saved[rank].clone()));
    }
    let reason = match StreamState::repartition(saved, rank, world, recipe.data.workers) {
        Ok(own) => {
            tracing::info!(
                saved_world = saved.len(),
                world,
                workers = recipe.data.workers,
                "data-stream positions re-partitioned"
            );
            return Ok(Some(own));
        }
        Err(e) => e.to_string(),
    };
    if restart_data {
        tracing::warn!(saved_world = saved.len(), world, %reason, dir = %dir.display(), "the checkpoint's data-stream positions do not fit this layout; restarting the data stream from the beginning as asked");
        return Ok(None);
    }
    Err(Error::Checkpoint {
        dir: dir.to_path_buf(),
        reason: format!(
            "written by {} rank(s), resumed on {world}: model and optimizer state carry over (the global batch of {} stays, accumulation adapts), but the data-stream positions do not re-partition: {reason}. Resume with a layout that keeps the data shares, or restart the data stream from the beginning with --restart-data (TrainOptions::restart_data)",
            saved.len(),
            recipe.trainer.global_batch
        ),
    })
}

/// The checkpoint this process resumes from, if any: its own choice in a single process,
/// rank 0's shared choice in a data-parallel run. With a `mirror`, `--resume auto` on a
/// machine without checkpoints fetches the newest one the mirror holds.
pub(crate) fn choose_checkpoint(
    store: &CheckpointStore,
    resume: &Resume,
    dp: Option<&DataParallel>,
    mirror: Option<&ObjectFolder>,
) -> Result<Option<PathBuf>> {
    match dp {
        None => resolve_resume(store, resume, mirror),
        Some(dp) => agree_resume(dp, store, resume, mirror),
    }
}

/// A checkpoint read back into the model and optimizer.
pub(crate) struct Restored {
    /// Counters as saved (with every rank's data position when saved by several ranks).
    pub state: TrainState,
    /// Where this rank's data stream continues; `None` starts it afresh.
    pub data: Option<StreamState>,
}

/// Loads the checkpoint in `dir` into `model` and `optim` and works out this rank's data
/// position (see [`rank_data_state`]).
pub(crate) fn restore(
    dir: &Path,
    model: &corenet_model::OpenElm,
    optim: &mut crate::optim::Optimizer,
    recipe: &Recipe,
    recipe_hash: &str,
    (rank, world): (usize, usize),
    restart_data: bool,
) -> Result<Restored> {
    let state = crate::checkpoint::contents::read_checkpoint(dir, model, optim)?;
    tracing::info!(step = state.step, dir = %dir.display(), "resumed");
    if state.recipe_hash != recipe_hash {
        tracing::warn!(checkpoint = %state.recipe_hash, recipe = %recipe_hash, "resuming with a training recipe that differs from the checkpoint's; later checkpoints record the new one");
    }
    let data = rank_data_state(&state, dir, rank, world, recipe, restart_data)?;
    Ok(Restored { state, data })
}
