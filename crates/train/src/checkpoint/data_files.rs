//! Whether a resumed run reads the data it started on. Rank 0 alone fingerprints the shard
//! files (one rank's reads, not `world_size`'s), compares them with the list its checkpointed
//! stream state recorded, and shares the verdict, so every rank fails alike with the message
//! naming the files. When the change is accepted, rank 0 also shares the new list, and every
//! rank moves its own position onto it the same way ([`StreamState::adopt_files`]).

use std::path::Path;
use std::sync::Arc;

use corenet_data::{DataConfig, ShardList, StreamState};

use crate::dist::DataParallel;
use crate::error::{Error, Result};

/// Checks the shard files before the data stream opens. `checkpoint` is the checkpoint
/// directory with the stream state that recorded the list (rank 0's, `TrainState::data`), given
/// only when this rank's stream continues from `own`. Returns the current list on rank 0, for
/// [`corenet_data::DataStream::set_files`].
pub(crate) fn agree_data_files(
    config: &DataConfig,
    checkpoint: Option<(&Path, &StreamState)>,
    own: Option<&mut StreamState>,
    accept: bool,
    dp: Option<&DataParallel>,
) -> Result<Option<Arc<ShardList>>> {
    let root = dp.is_none_or(|dp| dp.rank() == 0);
    let verdict = root.then(|| -> Result<(ShardList, bool)> {
        let now = ShardList::of_config(config)?;
        let Some((dir, saved)) = checkpoint else {
            return Ok((now, false));
        };
        let change = now
            .check_resume(saved.files.as_deref(), accept)
            .map_err(|e| Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!("{e}. To continue on the files as they are now, resume with --accept-data-change (TrainOptions::accept_data_change); docs/training.md says what that does to the data stream"),
            })?;
        Ok((now, change.is_some()))
    });
    let shared = dp.map(|dp| {
        let encoded = verdict.as_ref().map(|v| match v {
            // The others need the new list only to move their positions after an accepted change.
            Ok((now, true)) => serde_json::to_vec(now).map_err(|e| e.to_string()),
            Ok((_, false)) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        });
        dp.share_result("check data files", encoded)
    });
    let (mine, accepted) = match verdict {
        // Rank 0 (or the only process): its own verdict, once every rank has heard it.
        Some(verdict) => {
            let (now, changed) = verdict?;
            shared.transpose()?;
            let now = Arc::new(now);
            let accepted = changed.then(|| Arc::clone(&now));
            (Some(now), accepted)
        }
        None => {
            let bytes = shared.transpose()?.unwrap_or_default();
            let accepted = (!bytes.is_empty())
                .then(|| serde_json::from_slice::<ShardList>(&bytes))
                .transpose()
                .map_err(|e| Error::Dist {
                    op: "check data files".into(),
                    message: format!("rank 0's file list: {e}"),
                })?;
            (None, accepted.map(Arc::new))
        }
    };
    if let (Some((_, saved)), Some(own), Some(now)) = (checkpoint, own, &accepted) {
        if let Some(recorded) = saved.files.as_deref() {
            own.adopt_files(recorded, now);
        }
    }
    Ok(mine)
}
