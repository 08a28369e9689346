//! A copy of every committed checkpoint on an object store (`checkpoint.mirror`), so that a
//! run survives the loss of its machine: rank 0 uploads each new checkpoint directory in the
//! background, checks every file read back from the store against the manifest's SHA-256,
//! uploads `manifest.json` last (a remote checkpoint without one is incomplete and never
//! resumed), and applies `keep_last` to the remote copies. `--resume auto` on a machine
//! without local checkpoints fetches the newest complete remote one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use corenet_data::remote::ObjectFolder;
use corenet_data::StorageConfig;
use corenet_model::manifest::{digest_reader, read_manifest, MANIFEST_FILE};

use crate::checkpoint::store::{CheckpointStore, STEP_PREFIX};
use crate::error::{Error, Result};

/// One checkpoint copied to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRecord {
    pub step: u64,
    pub url: String,
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Remote checkpoints deleted by `keep_last`.
    pub pruned: Vec<u64>,
}

/// The uploader: one checkpoint in flight at a time.
pub(crate) struct Mirror {
    folder: Arc<ObjectFolder>,
    keep_last: usize,
    in_flight: Option<JoinHandle<Result<MirrorRecord>>>,
}

impl Mirror {
    pub fn new(url: &str, storage: &StorageConfig, keep_last: usize) -> Result<Mirror> {
        Ok(Mirror {
            folder: Arc::new(ObjectFolder::open(url, storage)?),
            keep_last,
            in_flight: None,
        })
    }

    /// Starts copying the checkpoint of `step` in `dir`, after the copy in flight (whose
    /// outcome comes back) has finished.
    pub fn push(&mut self, step: u64, dir: PathBuf) -> Option<Result<MirrorRecord>> {
        let previous = self.wait();
        let (folder, keep) = (Arc::clone(&self.folder), self.keep_last);
        self.in_flight = Some(std::thread::spawn(move || {
            upload(&folder, step, &dir, keep)
        }));
        previous
    }

    /// Waits for the copy in flight, if any.
    pub fn wait(&mut self) -> Option<Result<MirrorRecord>> {
        let handle = self.in_flight.take()?;
        Some(handle.join().unwrap_or_else(|_| {
            Err(Error::Checkpoint {
                dir: PathBuf::new(),
                reason: "the checkpoint mirror's thread panicked".into(),
            })
        }))
    }
}

fn step_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:08}")
}

/// Uploads every file the manifest lists, checks each read back, then the manifest.
fn upload(folder: &ObjectFolder, step: u64, dir: &Path, keep_last: usize) -> Result<MirrorRecord> {
    let began = Instant::now();
    let manifest = read_manifest(dir)?;
    let name = step_name(step);
    let mut bytes = 0;
    for (file, digest) in &manifest.files {
        let remote = format!("{name}/{file}");
        folder.put_file(&remote, &dir.join(file))?;
        let url = folder.url_of(&remote);
        let mut back = folder.object(&remote)?.cursor(0);
        let got = digest_reader(&mut back, Path::new(&url))?;
        if &got != digest {
            return Err(Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the mirror's copy {url} reads back as {} bytes, sha256 {}; the manifest says {} bytes, sha256 {}",
                    got.size, got.sha256, digest.size, digest.sha256
                ),
            });
        }
        bytes += digest.size;
    }
    folder.put_file(&format!("{name}/{MANIFEST_FILE}"), &dir.join(MANIFEST_FILE))?;
    let pruned = prune(folder, keep_last)?;
    Ok(MirrorRecord {
        step,
        url: folder.url_of(&name),
        files: manifest.files.len() + 1,
        bytes,
        seconds: began.elapsed().as_secs_f64(),
        pruned,
    })
}

/// The remote checkpoints: step → (complete, object names), by step.
fn remote_steps(
    folder: &ObjectFolder,
) -> Result<std::collections::BTreeMap<u64, (bool, Vec<String>)>> {
    let mut steps = std::collections::BTreeMap::<u64, (bool, Vec<String>)>::new();
    for (name, _) in folder.list()? {
        let Some((top, rest)) = name.split_once('/') else {
            continue;
        };
        let Some(step) = top.strip_prefix(STEP_PREFIX).and_then(|s| s.parse().ok()) else {
            continue;
        };
        let entry = steps.entry(step).or_default();
        entry.0 |= rest == MANIFEST_FILE;
        entry.1.push(name);
    }
    Ok(steps)
}

/// Deletes complete remote checkpoints beyond the newest `keep_last` (0 keeps all), manifest
/// first, so that a half-deleted one is never taken for complete.
fn prune(folder: &ObjectFolder, keep_last: usize) -> Result<Vec<u64>> {
    if keep_last == 0 {
        return Ok(Vec::new());
    }
    let complete: Vec<(u64, Vec<String>)> = remote_steps(folder)?
        .into_iter()
        .filter(|(_, (done, _))| *done)
        .map(|(step, (_, names))| (step, names))
        .collect();
    let excess = complete.len().saturating_sub(keep_last);
    let mut pruned = Vec::new();
    for (step, mut names) in complete.into_iter().take(excess) {
        names.sort_by_key(|n| !n.ends_with(MANIFEST_FILE));
        for n in &names {
            folder.delete(n)?;
        }
        pruned.push(step);
    }
    Ok(pruned)
}

/// Copies the newest complete remote checkpoint into `store` (verified as a local one is) and
/// returns its directory; `None` when the store holds none.
pub(crate) fn fetch_newest(
    folder: &ObjectFolder,
    store: &CheckpointStore,
) -> Result<Option<PathBuf>> {
    let Some((step, (_, names))) = remote_steps(folder)?
        .into_iter()
        .rev()
        .find(|(_, (done, _))| *done)
    else {
        return Ok(None);
    };
    let name = step_name(step);
    let tmp = store.tmp_dir_for(step);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    for remote in &names {
        let Some(file) = remote.strip_prefix(&format!("{name}/")) else {
            continue;
        };
        let local = tmp.join(file);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        folder.get_file(remote, &local)?;
    }
    CheckpointStore::verify(&tmp)?;
    let dir = store.dir_for(step);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io("rename", &dir, e))?;
    tracing::info!(step, from = %folder.url_of(&name), to = %dir.display(), "fetched the newest checkpoint from the mirror");
    Ok(Some(dir))
}
