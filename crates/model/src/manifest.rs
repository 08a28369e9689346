//! A corenet checkpoint's `manifest.json`: the size and SHA-256 of every file, read back and
//! checked before any of them is trusted. [`seal`] writes one over a freshly filled folder (the
//! trainer's checkpoint store, checkpoint averaging and exports all seal theirs the same way;
//! the store adds the atomic renames); reading and verifying lives here too, so that every
//! loader of weights — resume, `--init-from`, `generate`, `eval`, export, averaging — checks the
//! same way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Name of the manifest inside every checkpoint directory; reserved (writers may not create it).
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest layout written by this code; newer ones are refused on read.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Size and digest of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub size: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub step: u64,
    /// Relative path (with `/` separators) → digest, for every file except the manifest.
    pub files: BTreeMap<String, FileDigest>,
    /// Free-form caller data (recipe hash, tokens seen, ...), stored verbatim.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Reads `dir/manifest.json`, refusing a missing one (an incomplete checkpoint) and one written
/// by a newer format.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!("no {MANIFEST_FILE} (incomplete checkpoint)"),
            })
        }
        Err(source) => return Err(Error::Io { path, source }),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })?;
    if manifest.format_version > MANIFEST_FORMAT_VERSION {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "manifest format version {} is newer than this build supports ({MANIFEST_FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}

/// Checks every file listed in `dir/manifest.json` (existence, size, then SHA-256) and returns
/// the manifest. Errors name the failing file. Files not in the manifest are ignored.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    check_files(dir, &manifest, manifest.files.keys().map(String::as_str))?;
    Ok(manifest)
}

/// Checks only the files named (each must be listed in the manifest): a loader that reads the
/// weights need not hash the optimizer state, twice their size.
pub fn verify_files<'a>(dir: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    check_files(dir, &manifest, names)?;
    Ok(manifest)
}

fn check_files<'a>(
    dir: &Path,
    manifest: &Manifest,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let file_err = |file: &str, reason: String| Error::CheckpointFile {
        dir: dir.to_path_buf(),
        file: file.to_string(),
        reason,
    };
    for name in names {
        let want = manifest
            .files
            .get(name)
            .ok_or_else(|| file_err(name, "not listed in the manifest".into()))?;
        let path = safe_join(dir, name).map_err(|reason| file_err(name, reason))?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(file_err(name, "missing".into()))
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        if !meta.is_file() {
            return Err(file_err(name, "not a regular file".into()));
        }
        // Size first: a truncated file is the common failure and needs no hashing.
        if meta.len() != want.size {
            return Err(file_err(
                name,
                format!("size {} but manifest says {}", meta.len(), want.size),
            ));
        }
        let got = file_digest(&path)?.sha256;
        if !got.eq_ignore_ascii_case(&want.sha256) {
            return Err(file_err(
                name,
                format!("sha256 {got} but manifest says {}", want.sha256),
            ));
        }
    }
    Ok(())
}

/// Size and SHA-256 of the file at `path`.
pub fn file_digest(path: &Path) -> Result<FileDigest> {
    let mut f = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    digest_reader(&mut f, path)
}

/// Streams `f` (opened from `path`, named in errors) through SHA-256.
pub fn digest_reader(f: &mut impl Read, path: &Path) -> Result<FileDigest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileDigest { size, sha256 })
}

/// Joins a manifest's relative path onto `dir`, refusing anything that could escape it (the
/// manifest is data read from disk, not trusted).
fn safe_join(dir: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("path in manifest is not a plain relative path".into());
    }
    Ok(dir.join(rel_path))
}

/// Seals a freshly written folder: fsyncs every file and sub-directory, writes `manifest.json`
/// (size and SHA-256 of every other file, `step`, `metadata`) and fsyncs it and the folder.
/// Only regular files and directories are allowed: a symlink would make the manifest describe
/// data that lives outside the folder. A writer may not have created `manifest.json` itself.
pub fn seal(
    dir: &Path,
    step: u64,
    metadata: serde_json::Map<String, serde_json::Value>,
) -> Result<Manifest> {
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        step,
        files: digest_and_sync_tree(dir)?,
        metadata,
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(manifest).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    write_synced(&path, &json)?;
    sync_dir(dir)
}

/// Fsyncs a directory, so that the names created in it survive a crash (a no-op off Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|source| io_err(dir, source))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

fn digest_and_sync_tree(root: &Path) -> Result<BTreeMap<String, FileDigest>> {
    let mut files = BTreeMap::new();
    walk_files(root, |rel, path| {
        files.insert(rel, sync_and_digest(path)?);
        Ok(())
    })?;
    Ok(files)
}

/// Fsyncs the file at `path` and returns its size and SHA-256: how each writer of a checkpoint
/// written by several processes seals its own files (see [`seal_with`]).
pub fn sync_and_digest(path: &Path) -> Result<FileDigest> {
    // Open for writing only to fsync; some platforms refuse fsync on read-only handles.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))?;
    digest_reader(&mut f, path)
}

/// Writes `dir/manifest.json` over files whose writers synced and hashed them themselves (each
/// rank its own part, [`sync_and_digest`]). The folder must hold exactly the files of `files`,
/// each of its size; an extra, missing or resized file is an error naming it.
pub fn seal_with(
    dir: &Path,
    step: u64,
    metadata: serde_json::Map<String, serde_json::Value>,
    files: BTreeMap<String, FileDigest>,
) -> Result<Manifest> {
    let bad = |reason: String| Error::Checkpoint {
        dir: dir.to_path_buf(),
        reason,
    };
    let mut found = BTreeMap::new();
    walk_files(dir, |rel, path| {
        let size = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
        found.insert(rel, size);
        Ok(())
    })?;
    for (name, digest) in &files {
        match found.remove(name) {
            None => return Err(bad(format!("`{name}` was reported written but is missing"))),
            Some(size) if size != digest.size => {
                return Err(bad(format!(
                    "`{name}` is {size} bytes, its writer reported {}",
                    digest.size
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found.keys().next() {
        return Err(bad(format!(
            "`{extra}` was written by no writer that reported"
        )));
    }
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        step,
        files,
        metadata,
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Calls `visit(relative path, path)` for every regular file under `root` (fsyncing each
/// directory after its listing), refusing the reserved manifest name and anything that is
/// neither a file nor a directory.
fn walk_files(root: &Path, mut visit: impl FnMut(String, &Path) -> Result<()>) -> Result<()> {
    let bad = |reason: String| Error::Checkpoint {
        dir: root.to_path_buf(),
        reason,
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let item = item.map_err(|e| io_err(&dir, e))?;
            let path = item.path();
            let name = item
                .file_name()
                .into_string()
                .map_err(|n| bad(format!("file name {n:?} is not UTF-8")))?;
            let rel = match prefix.is_empty() {
                true => name,
                false => format!("{prefix}/{name}"),
            };
            let kind = item.file_type().map_err(|e| io_err(&path, e))?;
            if kind.is_dir() {
                stack.push((path, rel));
            } else if kind.is_file() {
                if rel == MANIFEST_FILE {
                    return Err(bad(format!(
                        "the writer created `{MANIFEST_FILE}`, a name the store reserves"
                    )));
                }
                visit(rel, &path)?;
            } else {
                return Err(bad(format!(
                    "`{rel}` is not a regular file or directory (symlinks are not allowed)"
                )));
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}
