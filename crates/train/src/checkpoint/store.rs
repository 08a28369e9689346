//! The file-system side of checkpoints: where they live, how they become durable, how they are
//! checked and pruned. What goes *inside* a checkpoint (safetensors, optimizer state, train
//! state JSON) is the caller's business: [`CheckpointStore::save`] hands it a directory.
//!
//! Layout under the store's root:
//!
//! ```text
//! root/step-00000123/          a complete checkpoint (step = updates done)
//!     manifest.json            size + sha256 of every other file, step, format version, metadata
//!     ...                      whatever the caller wrote (sub-directories allowed)
//! root/.tmp-step-00000124/     a save in progress (or left by a crash): never read, removed
//! root/.old-step-00000100/     a checkpoint being deleted or replaced: never read, removed
//! root/latest -> step-00000123 the newest checkpoint saved
//! root/best -> step-00000100   the lowest validation loss (runs that validate)
//! ```
//!
//! A checkpoint whose manifest metadata carries a `validation_loss` competes for `best`; the
//! best one is never pruned, on top of the newest `keep_last`.
//!
//! A save writes into the temporary directory, fsyncs every file, writes and fsyncs the manifest,
//! fsyncs the directory, renames it into place (atomic on POSIX) and fsyncs the root. A crash or
//! error at any point leaves either the old set of checkpoints or the new one, never a
//! half-written `step-*` directory. One process (rank 0) owns a root at a time: the store
//! removes leftover temporary directories, which would break a concurrent writer.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use corenet_model::manifest::{FileDigest, Manifest, MANIFEST_FILE, MANIFEST_FORMAT_VERSION};

pub(crate) const STEP_PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-step-";
const OLD_PREFIX: &str = ".old-step-";
/// Where checkpoints that fail verification are moved (never deleted).
pub const QUARANTINE_DIR: &str = "quarantine";
/// Name of the pointer to the newest checkpoint saved.
pub const LATEST: &str = "latest";
/// Name of the pointer to the checkpoint with the lowest validation loss.
pub const BEST: &str = "best";
/// Manifest metadata key of the validation loss measured at a checkpoint's step.
pub const VALIDATION_LOSS_KEY: &str = "validation_loss";

/// A checkpoint directory found under the root (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub step: u64,
    pub dir: PathBuf,
}

/// A checkpoint whose every file matched its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCheckpoint {
    pub step: u64,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A checkpoint directory that failed verification, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCheckpoint {
    pub step: u64,
    pub dir: PathBuf,
    pub reason: String,
}

/// What [`CheckpointStore::scan`] found: the newest valid checkpoint, and the invalid ones
/// newer than it (newest first; all of them when none is valid).
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub valid: Option<VerifiedCheckpoint>,
    pub invalid: Vec<InvalidCheckpoint>,
}

/// Checkpoint directories under one root, keeping the newest `keep_last`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    keep_last: usize,
}

impl CheckpointStore {
    /// Opens (creating if needed) the store at `root`. `keep_last = 0` keeps every checkpoint.
    pub fn new(root: impl Into<PathBuf>, keep_last: usize) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        Ok(Self { root, keep_last })
    }

    /// A store at `root` that does not create the directory: dry runs never save (a save
    /// through it fails unless the directory exists by then).
    pub fn unopened(root: impl Into<PathBuf>, keep_last: usize) -> Self {
        Self {
            root: root.into(),
            keep_last,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn keep_last(&self) -> usize {
        self.keep_last
    }

    /// Final directory of the checkpoint for `step` (`root/step-00000123`).
    pub fn dir_for(&self, step: u64) -> PathBuf {
        self.root.join(format!("{STEP_PREFIX}{step:08}"))
    }

    /// Saves a checkpoint for `step`: `write` fills a fresh temporary directory, then the store
    /// writes the manifest (with `metadata`), makes everything durable, renames the directory to
    /// [`dir_for(step)`](Self::dir_for) and prunes to `keep_last`.
    ///
    /// On any error (from `write` or from the store), the temporary directory is removed and
    /// the existing checkpoints are left as they were. A checkpoint already present for `step`
    /// is replaced. Pruning never removes the checkpoint just written, even when newer steps
    /// exist (a run resumed from an older checkpoint); pruning failures are logged, not returned,
    /// because the new checkpoint is already durable.
    pub fn save<F>(
        &self,
        step: u64,
        metadata: serde_json::Map<String, serde_json::Value>,
        write: F,
    ) -> Result<VerifiedCheckpoint>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        let pending = self.begin(step)?;
        write(&pending.dir()).map_err(|source| Error::CheckpointWrite {
            step,
            source: Box::new(source),
        })?;
        pending.commit(metadata, None)
    }

    /// The temporary directory a save of `step` writes into (every rank of a data-parallel save
    /// writes its part there, once rank 0 has [begun](Self::begin) it).
    pub fn tmp_dir_for(&self, step: u64) -> PathBuf {
        self.root.join(format!("{TMP_PREFIX}{step:08}"))
    }

    /// Starts the save of `step`: a fresh temporary directory, removed again unless the
    /// returned checkpoint is [committed](PendingCheckpoint::commit).
    pub fn begin(&self, step: u64) -> Result<PendingCheckpoint> {
        let tmp = self.tmp_dir_for(step);
        // A directory of this name can only be debris from an earlier crash.
        remove_dir_if_exists(&tmp)?;
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create directory", &tmp, e))?;
        Ok(PendingCheckpoint {
            store: self.clone(),
            step,
            // Removes the partial directory on every early return, and on a panic of a writer.
            guard: RemoveOnDrop(Some(tmp)),
        })
    }

    /// Renames the sealed temporary directory of `step` into place, then updates the pointers
    /// and prunes.
    fn publish(
        &self,
        step: u64,
        guard: RemoveOnDrop,
        manifest: Manifest,
    ) -> Result<VerifiedCheckpoint> {
        let tmp = self.tmp_dir_for(step);
        let dir = self.dir_for(step);
        if dir.exists() {
            // rename() cannot replace a non-empty directory, so move the old one aside first.
            let old = self.root.join(format!("{OLD_PREFIX}{step:08}"));
            remove_dir_if_exists(&old)?;
            rename(&dir, &old)?;
            tracing::warn!(step, dir = %dir.display(), "replacing existing checkpoint for this step");
            if let Err(e) = rename(&tmp, &dir) {
                // Put the previous checkpoint back rather than leave it to be cleaned up as debris.
                if let Err(back) = rename(&old, &dir) {
                    tracing::warn!(error = %back, "could not restore the replaced checkpoint");
                }
                return Err(e);
            }
            guard.disarm();
            sync_dir(&self.root)?;
            // The new checkpoint is in place; a leftover `.old-step-*` is removed later.
            if let Err(e) = remove_dir_if_exists(&old) {
                tracing::warn!(error = %e, "could not remove the replaced checkpoint");
            }
        } else {
            rename(&tmp, &dir)?;
            guard.disarm();
        }
        sync_dir(&self.root)?;
        if let Err(e) = self.point(LATEST, step) {
            tracing::warn!(error = %e, "could not update the `latest` pointer");
        }
        tracing::info!(step, dir = %dir.display(), files = manifest.files.len(), "checkpoint saved");

        self.prune(step);
        if let Some((best, loss)) = self.best() {
            match self.point(BEST, best) {
                Ok(()) => tracing::info!(step = best, validation_loss = loss, "best checkpoint"),
                Err(e) => tracing::warn!(error = %e, "could not update the `best` pointer"),
            }
        }
        Ok(VerifiedCheckpoint {
            step,
            dir,
            manifest,
        })
    }

    /// Checks every file listed in `dir/manifest.json` (existence, size, then SHA-256) and
    /// returns the manifest. Errors name the failing file. Files not in the manifest are ignored.
    pub fn verify(dir: impl AsRef<Path>) -> Result<Manifest> {
        Ok(corenet_model::manifest::verify(dir.as_ref())?)
    }

    /// Complete-looking checkpoint directories (`step-N`), oldest first. Temporary and
    /// being-deleted directories are not listed; nothing is verified.
    pub fn list(&self) -> Result<Vec<CheckpointEntry>> {
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&self.root).map_err(|e| Error::io("list", &self.root, e))? {
            let item = item.map_err(|e| Error::io("list", &self.root, e))?;
            let Some(step) = item.file_name().to_str().and_then(parse_step_dir) else {
                continue;
            };
            let is_dir = item
                .file_type()
                .map_err(|e| Error::io("stat", item.path(), e))?
                .is_dir();
            if is_dir {
                entries.push(CheckpointEntry {
                    step,
                    dir: item.path(),
                });
            }
        }
        entries.sort_by_key(|e| e.step);
        Ok(entries)
    }

    /// The newest checkpoint that verifies, walking newest → oldest, and every newer one that
    /// failed (with the reason); leftover temporary directories are removed first. Nothing is
    /// moved or deleted: callers decide (see [`Self::quarantine`]). An error means the root
    /// itself could not be read (so "start from scratch" would be wrong).
    pub fn scan(&self) -> Result<Scan> {
        if let Err(e) = self.clean_tmp() {
            tracing::warn!(error = %e, "could not remove leftover temporary checkpoint directories");
        }
        let mut invalid = Vec::new();
        for entry in self.list()?.into_iter().rev() {
            let reason = match Self::verify(&entry.dir) {
                Ok(manifest) if manifest.step == entry.step => {
                    let valid = VerifiedCheckpoint {
                        step: entry.step,
                        dir: entry.dir,
                        manifest,
                    };
                    return Ok(Scan {
                        valid: Some(valid),
                        invalid,
                    });
                }
                Ok(manifest) => format!(
                    "manifest step {} does not match the directory name",
                    manifest.step
                ),
                Err(e) => e.to_string(),
            };
            tracing::warn!(dir = %entry.dir.display(), %reason, "checkpoint fails verification");
            invalid.push(InvalidCheckpoint {
                step: entry.step,
                dir: entry.dir,
                reason,
            });
        }
        Ok(Scan {
            valid: None,
            invalid,
        })
    }

    /// The newest checkpoint that verifies ([`Self::scan`]), or `None`.
    pub fn latest_valid(&self) -> Result<Option<VerifiedCheckpoint>> {
        Ok(self.scan()?.valid)
    }

    /// Moves a checkpoint that failed verification to `root/quarantine/` (never deletes it: it
    /// is the evidence of what went wrong), so it no longer counts as a checkpoint of the run.
    /// Returns where it went.
    pub fn quarantine(&self, bad: &InvalidCheckpoint) -> Result<PathBuf> {
        let dir = self.root.join(QUARANTINE_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let name = format!("{STEP_PREFIX}{:08}", bad.step);
        let mut target = dir.join(&name);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        rename(&bad.dir, &target)?;
        sync_dir(&self.root)?;
        tracing::warn!(from = %bad.dir.display(), to = %target.display(), reason = %bad.reason, "moved a checkpoint that fails verification into quarantine");
        Ok(target)
    }

    /// Points `root/latest` at the checkpoint for `step` (a symlink on Unix, replaced
    /// atomically; a one-line file naming the directory elsewhere).
    pub fn point_latest(&self, step: u64) -> Result<()> {
        self.point(LATEST, step)
    }

    /// The complete checkpoint with the lowest validation loss in its manifest, and the loss
    /// (the earliest of equals).
    pub fn best(&self) -> Option<(u64, f64)> {
        let entries = self.list().ok()?;
        best_of(entries.iter().filter_map(|e| {
            let manifest = read_manifest(&e.dir).ok().filter(|m| m.step == e.step)?;
            Some((e.step, validation_loss(&manifest)?))
        }))
    }

    /// Points `root/NAME` at the checkpoint for `step`.
    fn point(&self, pointer: &str, step: u64) -> Result<()> {
        let name = format!("{STEP_PREFIX}{step:08}");
        let tmp = self.root.join(format!(".{pointer}.tmp"));
        remove_file_if_exists(&tmp)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&name, &tmp).map_err(|e| Error::io("symlink", &tmp, e))?;
        #[cfg(not(unix))]
        std::fs::write(&tmp, format!("{name}\n")).map_err(|e| Error::io("write", &tmp, e))?;
        rename(&tmp, &self.root.join(pointer))?;
        sync_dir(&self.root)
    }

    /// Removes `.tmp-step-*` and `.old-step-*` directories (debris of interrupted saves or
    /// deletions). Returns how many were removed.
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut removed = 0;
        for item in std::fs::read_dir(&self.root).map_err(|e| Error::io("list", &self.root, e))? {
            let item = item.map_err(|e| Error::io("list", &self.root, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) || name.starts_with(OLD_PREFIX) {
                tracing::warn!(dir = %item.path().display(), "removing leftover temporary checkpoint directory");
                remove_dir_if_exists(&item.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes the oldest checkpoints until `keep_last` remain, never touching `protect`.
    fn prune(&self, protect: u64) {
        if self.keep_last == 0 {
            return;
        }
        let entries = match self.list() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not list checkpoints for pruning");
                return;
            }
        };
        if entries.iter().any(|e| e.step > protect) {
            tracing::warn!(
                step = protect,
                "newer checkpoints than the one just saved exist (resumed from an older one?)"
            );
        }
        // Only checkpoints whose manifest reads back for their step count toward keep_last: an
        // incomplete or damaged directory must never push a good checkpoint out. It is left in
        // place and reported. (Full verification would hash every kept checkpoint at every save.)
        let (mut complete, mut incomplete) = (Vec::new(), Vec::new());
        for entry in entries {
            match read_manifest(&entry.dir) {
                Ok(m) if m.step == entry.step => complete.push((entry, m)),
                _ => incomplete.push(entry),
            }
        }
        for entry in &incomplete {
            tracing::warn!(dir = %entry.dir.display(), "not counted toward keep_last and not pruned: no usable manifest");
        }
        // The best validated checkpoint is kept on top of the newest keep_last.
        let best = best_of(
            complete
                .iter()
                .filter_map(|(e, m)| Some((e.step, validation_loss(m)?))),
        )
        .map(|(step, _)| step);
        let newest = complete.iter().rev().take(self.keep_last);
        let best_is_extra = best.is_some_and(|b| !newest.clone().any(|(e, _)| e.step == b));
        let excess = complete
            .len()
            .saturating_sub(self.keep_last)
            .saturating_sub(usize::from(best_is_extra));
        let victims = complete
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.step != protect && Some(e.step) != best);
        for entry in victims.take(excess) {
            // Rename first so a crash mid-delete never leaves a half-deleted `step-*` directory.
            let old = self.root.join(format!("{OLD_PREFIX}{:08}", entry.step));
            let result = remove_dir_if_exists(&old)
                .and_then(|()| rename(&entry.dir, &old))
                .and_then(|()| remove_dir_if_exists(&old));
            match result {
                Ok(()) => tracing::info!(step = entry.step, "pruned old checkpoint"),
                Err(e) => tracing::warn!(error = %e, "could not prune old checkpoint"),
            }
        }
    }
}

/// A manifest's recorded validation loss, when finite.
fn validation_loss(manifest: &Manifest) -> Option<f64> {
    manifest
        .metadata
        .get(VALIDATION_LOSS_KEY)
        .and_then(serde_json::Value::as_f64)
        .filter(|l| l.is_finite())
}

/// The (step, loss) with the lowest loss; the earliest step among equals.
fn best_of(losses: impl Iterator<Item = (u64, f64)>) -> Option<(u64, f64)> {
    losses.fold(None, |best: Option<(u64, f64)>, (step, loss)| match best {
        Some((_, b)) if b <= loss => best,
        _ => Some((step, loss)),
    })
}

/// `step-00000123` → 123; anything else → None.
fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A save in progress: its temporary directory, filled by the caller (or by every rank), then
/// sealed and renamed into place by [`PendingCheckpoint::commit`]; dropped uncommitted, the
/// directory is removed and the existing checkpoints stay as they were.
#[derive(Debug)]
pub struct PendingCheckpoint {
    store: CheckpointStore,
    step: u64,
    guard: RemoveOnDrop,
}

impl PendingCheckpoint {
    /// Where the checkpoint's files go.
    pub fn dir(&self) -> PathBuf {
        self.store.tmp_dir_for(self.step)
    }

    /// Writes the manifest (with `metadata`), makes everything durable and renames the
    /// directory into place; then the `latest`/`best` pointers and pruning follow (their
    /// failures are logged: the checkpoint is durable by then). With `digests`, the files were
    /// synced and hashed by their writers (every rank its own part) and are only checked against
    /// the listing; without, every file is synced and hashed here.
    pub fn commit(
        self,
        metadata: serde_json::Map<String, serde_json::Value>,
        digests: Option<BTreeMap<String, FileDigest>>,
    ) -> Result<VerifiedCheckpoint> {
        let dir = self.dir();
        let manifest = match digests {
            Some(files) => corenet_model::manifest::seal_with(&dir, self.step, metadata, files)?,
            None => corenet_model::manifest::seal(&dir, self.step, metadata)?,
        };
        self.store.publish(self.step, self.guard, manifest)
    }
}

/// Deletes a temporary directory when dropped, unless disarmed after a successful rename.
#[derive(Debug)]
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = remove_dir_if_exists(&dir) {
                tracing::warn!(error = %e, "could not remove partial checkpoint directory");
            }
        }
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io("remove directory", dir, e)),
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        Error::io(
            "rename",
            format!("{} -> {}", from.display(), to.display()),
            e,
        )
    })
}

/// Makes a directory's entries (creations, renames) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    Ok(corenet_model::manifest::sync_dir(dir)?)
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    Ok(corenet_model::manifest::read_manifest(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;

    fn meta(recipe_hash: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("recipe_hash".into(), json!(recipe_hash));
        m
    }

    /// A writer producing a model file, a nested optimizer file and a small state file whose
    /// contents depend on the step, like the real trainer's.
    fn write_fake(step: u64) -> impl FnOnce(&Path) -> Result<()> {
        move |dir: &Path| {
            let w = |p: PathBuf, bytes: Vec<u8>| {
                std::fs::write(&p, bytes).map_err(|e| Error::io("write", p, e))
            };
            w(
                dir.join("model.safetensors"),
                vec![step as u8; 4096 + step as usize],
            )?;
            let sub = dir.join("optim");
            std::fs::create_dir(&sub).map_err(|e| Error::io("create directory", &sub, e))?;
            w(
                sub.join("moments.bin"),
                (0..1000u32)
                    .flat_map(|i| (i * step as u32).to_le_bytes())
                    .collect(),
            )?;
            w(
                dir.join("state.json"),
                format!("{{\"step\":{step}}}").into_bytes(),
            )
        }
    }

    fn steps(store: &CheckpointStore) -> Vec<u64> {
        store.list().expect("list").iter().map(|e| e.step).collect()
    }

    fn dir_names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn flip_byte(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).expect("read");
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn save_verify_and_prune_to_keep_last() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path().join("ckpt"), 2).expect("store");
        for step in [100, 200, 300, 400] {
            let saved = store
                .save(step, meta("abc123"), write_fake(step))
                .expect("save");
            assert_eq!(saved.dir, store.dir_for(step));
            assert_eq!(
                saved.dir.file_name().and_then(|n| n.to_str()),
                Some(format!("step-{step:08}").as_str())
            );
        }
        assert_eq!(steps(&store), vec![300, 400]);
        assert_eq!(
            dir_names(store.root()),
            vec!["latest", "step-00000300", "step-00000400"]
        );
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(store.root().join(LATEST)).expect("symlink"),
            PathBuf::from("step-00000400")
        );

        let m = CheckpointStore::verify(store.dir_for(400)).expect("verify");
        assert_eq!((m.step, m.format_version), (400, MANIFEST_FORMAT_VERSION));
        assert_eq!(m.metadata["recipe_hash"], "abc123");
        let names: Vec<&str> = m.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec!["model.safetensors", "optim/moments.bin", "state.json"]
        );
        assert_eq!(m.files["model.safetensors"].size, 4096 + 400);
        // sha256 of the state file, checked against an independent computation.
        let state = std::fs::read(store.dir_for(400).join("state.json")).expect("read");
        let want: String = Sha256::digest(&state)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(m.files["state.json"].sha256, want);

        let latest = store.latest_valid().expect("latest").expect("some");
        assert_eq!((latest.step, latest.manifest), (400, m));
    }

    #[test]
    fn the_best_validated_checkpoint_outlives_keep_last() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path().join("ckpt"), 2).expect("store");
        for (step, loss) in [
            (100, 5.0),
            (200, 3.0),
            (300, 4.0),
            (400, 3.5),
            (500, f64::NAN),
        ] {
            let mut metadata = meta("abc123");
            metadata.insert(VALIDATION_LOSS_KEY.into(), loss.into());
            store.save(step, metadata, write_fake(step)).expect("save");
        }
        // The newest two, plus 200 (lowest loss); NaN never wins.
        assert_eq!(steps(&store), vec![200, 400, 500]);
        assert_eq!(store.best(), Some((200, 3.0)));
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(store.root().join(BEST)).expect("symlink"),
            PathBuf::from("step-00000200")
        );
        // A better one takes over, and the old best becomes an ordinary old checkpoint.
        let mut metadata = meta("abc123");
        metadata.insert(VALIDATION_LOSS_KEY.into(), 2.0.into());
        store.save(600, metadata, write_fake(600)).expect("save");
        assert_eq!(steps(&store), vec![500, 600]);
        assert_eq!(store.best(), Some((600, 2.0)));
    }

    #[test]
    fn keep_last_zero_keeps_everything() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 0).expect("store");
        for step in 1..=5 {
            store.save(step, meta("h"), write_fake(step)).expect("save");
        }
        assert_eq!(steps(&store), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn corrupted_newest_falls_back_to_previous() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 3).expect("store");
        for step in [10, 20, 30] {
            store.save(step, meta("h"), write_fake(step)).expect("save");
        }
        flip_byte(&store.dir_for(30).join("optim/moments.bin"), 1234);
        let err = CheckpointStore::verify(store.dir_for(30)).expect_err("corruption detected");
        match &err {
            Error::CheckpointFile { file, reason, .. } => {
                assert_eq!(file, "optim/moments.bin");
                assert!(reason.contains("sha256"), "{reason}");
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("step-00000030"), "{err}");
        let latest = store.latest_valid().expect("latest").expect("some");
        assert_eq!(latest.step, 20);
        // Corrupt that one too: back to the oldest.
        std::fs::remove_file(store.dir_for(20).join("state.json")).expect("remove");
        assert!(CheckpointStore::verify(store.dir_for(20))
            .is_err_and(|e| e.to_string().contains("missing")));
        assert_eq!(
            store.latest_valid().expect("latest").map(|c| c.step),
            Some(10)
        );
    }

    #[test]
    fn truncated_file_is_detected_by_size() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 2).expect("store");
        store.save(1, meta("h"), write_fake(1)).expect("save");
        store.save(2, meta("h"), write_fake(2)).expect("save");
        let model = store.dir_for(2).join("model.safetensors");
        let bytes = std::fs::read(&model).expect("read");
        std::fs::write(&model, &bytes[..bytes.len() / 2]).expect("truncate");
        let err = CheckpointStore::verify(store.dir_for(2))
            .expect_err("truncation detected")
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("size"),
            "{err}"
        );
        assert_eq!(
            store.latest_valid().expect("latest").map(|c| c.step),
            Some(1)
        );
    }

    #[test]
    fn leftover_tmp_and_incomplete_dirs_are_ignored() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 5).expect("store");
        store.save(5, meta("h"), write_fake(5)).expect("save");
        // A crash mid-save leaves a tmp dir; a hand-made step dir has no manifest; a garbage
        // manifest and a manifest for the wrong step are also not usable.
        let debris = store.root().join(".tmp-step-00000009");
        std::fs::create_dir(&debris).expect("mkdir");
        std::fs::write(debris.join("model.safetensors"), b"partial").expect("write");
        std::fs::create_dir(store.dir_for(8)).expect("mkdir");
        std::fs::create_dir(store.dir_for(7)).expect("mkdir");
        std::fs::write(store.dir_for(7).join(MANIFEST_FILE), b"{not json").expect("write");
        std::fs::create_dir(store.dir_for(6)).expect("mkdir");
        let wrong_step = Manifest {
            format_version: 1,
            step: 3,
            files: BTreeMap::new(),
            metadata: Default::default(),
        };
        std::fs::write(
            store.dir_for(6).join(MANIFEST_FILE),
            serde_json::to_vec(&wrong_step).expect("json"),
        )
        .expect("write");
        std::fs::create_dir(store.root().join("not-a-checkpoint")).expect("mkdir");

        assert_eq!(steps(&store), vec![5, 6, 7, 8]);
        assert!(CheckpointStore::verify(store.dir_for(8))
            .is_err_and(|e| e.to_string().contains("incomplete")));
        assert!(CheckpointStore::verify(store.dir_for(7))
            .is_err_and(|e| matches!(e, Error::Json { .. })));
        assert_eq!(
            store.latest_valid().expect("latest").map(|c| c.step),
            Some(5)
        );
        assert!(!debris.exists(), "tmp debris must be cleaned up");
    }

    fn assert_untouched(store: &CheckpointStore, before: &[String]) {
        assert_eq!(
            &dir_names(store.root()),
            before,
            "root changed after a failed save"
        );
        for e in store.list().expect("list") {
            CheckpointStore::verify(&e.dir).expect("previous checkpoints still verify");
        }
    }

    #[test]
    fn writer_error_leaves_previous_checkpoints_intact() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 1).expect("store");
        store.save(1, meta("h"), write_fake(1)).expect("save");
        let before = dir_names(store.root());

        // 1. The writer gives up with its own error after writing part of the checkpoint.
        let err = store
            .save(2, meta("h"), |dir: &Path| {
                std::fs::write(dir.join("model.safetensors"), b"half")
                    .map_err(|e| Error::io("write", dir, e))?;
                Err(Error::config("trainer.steps", "simulated failure"))
            })
            .expect_err("must fail");
        assert!(
            matches!(err, Error::CheckpointWrite { step: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("step 2"), "{err}");
        assert_untouched(&store, &before);

        // 2. A write that fails at the OS level (the target's parent does not exist).
        let err = store
            .save(2, meta("h"), |dir: &Path| {
                let p = dir.join("no/such/dir/optim.bin");
                std::fs::write(&p, b"x").map_err(|e| Error::io("write", p, e))
            })
            .expect_err("must fail");
        assert!(err.to_string().contains("optim.bin"), "{err}");
        assert_untouched(&store, &before);

        // 3. The writer panics (e.g. a bug): the guard still removes the partial directory.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.save(2, meta("h"), |dir: &Path| {
                std::fs::write(dir.join("a"), b"x").map_err(|e| Error::io("write", dir, e))?;
                panic!("simulated bug in the writer");
            });
        }));
        assert!(result.is_err());
        assert_untouched(&store, &before);

        assert_eq!(
            store.latest_valid().expect("latest").map(|c| c.step),
            Some(1)
        );
    }

    #[test]
    fn store_side_failures_also_clean_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 3).expect("store");
        store.save(1, meta("h"), write_fake(1)).expect("save");
        let before = dir_names(store.root());

        // The manifest name is reserved.
        let err = store
            .save(2, meta("h"), |dir: &Path| {
                std::fs::write(dir.join(MANIFEST_FILE), b"{}")
                    .map_err(|e| Error::io("write", dir, e))
            })
            .expect_err("reserved name");
        assert!(err.to_string().contains("reserves"), "{err}");
        assert_untouched(&store, &before);

        // Symlinks would put data outside the checkpoint.
        #[cfg(unix)]
        {
            let err = store
                .save(2, meta("h"), |dir: &Path| {
                    std::os::unix::fs::symlink("/etc/hostname", dir.join("link"))
                        .map_err(|e| Error::io("symlink", dir, e))
                })
                .expect_err("symlink refused");
            assert!(err.to_string().contains("symlink"), "{err}");
            assert_untouched(&store, &before);
        }
    }

    #[test]
    fn saving_an_existing_step_replaces_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 3).expect("store");
        store.save(7, meta("first"), write_fake(7)).expect("save");
        store
            .save(7, meta("second"), write_fake(8))
            .expect("save again");
        assert_eq!(dir_names(store.root()), vec!["latest", "step-00000007"]);
        let m = CheckpointStore::verify(store.dir_for(7)).expect("verify");
        assert_eq!(m.metadata["recipe_hash"], "second");
        assert_eq!(m.files["model.safetensors"].size, 4096 + 8);
    }

    #[test]
    fn pruning_never_removes_the_checkpoint_just_saved() {
        // Resumed from 100 after 300 turned out corrupt: saving 200 must keep 200.
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = CheckpointStore::new(tmp.path(), 3).expect("store");
        for step in [100, 300] {
            store.save(step, meta("h"), write_fake(step)).expect("save");
        }
        let store = CheckpointStore::new(tmp.path(), 1).expect("store");
        store.save(200, meta("h"), write_fake(200)).expect("save");
        assert_eq!(steps(&store), vec![200]);
    }

    #[test]
    fn manifest_paths_cannot_escape_the_checkpoint() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("step-00000001");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(tmp.path().join("secret"), b"x").expect("write");
        for bad in ["../secret", "/etc/hostname", ""] {
            let mut files = BTreeMap::new();
            files.insert(
                bad.to_string(),
                FileDigest {
                    size: 1,
                    sha256: String::new(),
                },
            );
            let m = Manifest {
                format_version: 1,
                step: 1,
                files,
                metadata: Default::default(),
            };
            std::fs::write(
                dir.join(MANIFEST_FILE),
                serde_json::to_vec(&m).expect("json"),
            )
            .expect("write");
            let err = CheckpointStore::verify(&dir)
                .expect_err("must refuse")
                .to_string();
            assert!(err.contains("plain relative path"), "{bad}: {err}");
        }
        // A manifest from a future format is refused rather than misread.
        let m = Manifest {
            format_version: 99,
            step: 1,
            files: BTreeMap::new(),
            metadata: Default::default(),
        };
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&m).expect("json"),
        )
        .expect("write");
        assert!(CheckpointStore::verify(&dir).is_err_and(|e| e.to_string().contains("newer")));
    }

    #[test]
    fn step_dir_names_parse_strictly() {
        assert_eq!(parse_step_dir("step-00000123"), Some(123));
        assert_eq!(parse_step_dir("step-123456789012"), Some(123_456_789_012));
        for bad in [
            "step-",
            "step-12a",
            "step--1",
            ".tmp-step-00000001",
            "xstep-1",
            "step-+1",
        ] {
            assert_eq!(parse_step_dir(bad), None, "{bad}");
        }
    }
}
