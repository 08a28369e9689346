//! A folder written whole or not at all: files go into a hidden sibling (`.NAME.partial`),
//! which is sealed with a manifest and renamed into place at the end. A failure at any point
//! leaves no half-written folder under the target name, and the target is checked before
//! anything is written: it must not exist, or be an empty directory.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{seal, sync_dir, Manifest};

/// A folder being written; removed on drop unless [`StagedFolder::commit`] succeeded.
pub struct StagedFolder {
    target: PathBuf,
    staging: Option<PathBuf>,
}

impl StagedFolder {
    /// Checks `target` (absent, or an empty directory) and creates the staging folder next to it.
    pub fn create(target: &Path) -> Result<Self> {
        check_target(target)?;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refused(target, "has no usable folder name".into()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|source| Error::Io {
            path: parent.clone(),
            source,
        })?;
        let staging = parent.join(format!(".{name}.partial"));
        if staging.exists() {
            // Only an earlier writer that died leaves this name behind.
            std::fs::remove_dir_all(&staging).map_err(|source| Error::Io {
                path: staging.clone(),
                source,
            })?;
        }
        std::fs::create_dir(&staging).map_err(|source| Error::Io {
            path: staging.clone(),
            source,
        })?;
        Ok(StagedFolder {
            target: target.to_path_buf(),
            staging: Some(staging),
        })
    }

    /// Where the files go until the commit.
    pub fn path(&self) -> &Path {
        self.staging.as_deref().unwrap_or(&self.target)
    }

    /// Seals the staged files with a manifest (`step`, `metadata`) and moves them to the target.
    pub fn commit(
        mut self,
        step: u64,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Manifest> {
        let staging = self.staging.clone().unwrap_or_else(|| self.target.clone());
        let manifest = seal(&staging, step, metadata)?;
        // An empty target directory (allowed) must go first: rename() cannot replace it on
        // every platform.
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target).map_err(|source| Error::Io {
                path: self.target.clone(),
                source,
            })?;
        }
        std::fs::rename(&staging, &self.target).map_err(|source| Error::Io {
            path: self.target.clone(),
            source,
        })?;
        self.staging = None;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(manifest)
    }
}

impl Drop for StagedFolder {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            if let Err(e) = std::fs::remove_dir_all(&staging) {
                tracing::warn!(dir = %staging.display(), error = %e, "could not remove a partial folder");
            }
        }
    }
}

/// The target of a write must be new: absent, or an empty directory. Anything else is refused
/// before a byte is written, naming what is in the way.
pub fn check_target(target: &Path) -> Result<()> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(entry) => {
                let first = entry
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(refused(
                    target,
                    format!("is not empty (it holds `{first}`, …); give a new folder"),
                ))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if target.exists() => Err(refused(
            target,
            "exists and is not a folder; give a new folder".into(),
        )),
        Err(source) => Err(Error::Io {
            path: target.to_path_buf(),
            source,
        }),
    }
}

fn refused(target: &Path, reason: String) -> Error {
    Error::OutputRefused {
        path: target.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_folder_holds_the_files_and_a_manifest_of_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let target = root.path().join("out");
        let staged = StagedFolder::create(&target).expect("create");
        std::fs::write(staged.path().join("a.txt"), b"hello").expect("write");
        assert!(!target.exists(), "nothing appears before the commit");
        let manifest = staged.commit(7, serde_json::Map::new()).expect("commit");
        assert_eq!(manifest.step, 7);
        assert_eq!(manifest.files["a.txt"].size, 5);
        crate::manifest::verify(&target).expect("verifies");
        assert_eq!(std::fs::read_dir(root.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_dropped_folder_leaves_nothing_and_an_empty_target_is_allowed() {
        let root = tempfile::tempdir().expect("tempdir");
        let target = root.path().join("out");
        std::fs::create_dir(&target).expect("mkdir");
        {
            let staged = StagedFolder::create(&target).expect("empty target is fine");
            std::fs::write(staged.path().join("a.txt"), b"x").expect("write");
        }
        let names: Vec<_> = std::fs::read_dir(root.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);
        assert_eq!(std::fs::read_dir(&target).expect("ls").count(), 0);
    }

    #[test]
    fn a_non_empty_target_or_a_file_is_refused_before_writing() {
        let root = tempfile::tempdir().expect("tempdir");
        let full = root.path().join("full");
        std::fs::create_dir(&full).expect("mkdir");
        std::fs::write(full.join("keep.txt"), b"mine").expect("write");
        let err = StagedFolder::create(&full)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("not empty") && err.contains("keep.txt"),
            "{err}"
        );
        let file = root.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = StagedFolder::create(&file)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert!(!root.path().join(".full.partial").exists());
        assert_eq!(std::fs::read(full.join("keep.txt")).expect("read"), b"mine");
    }
}
