//! The shard files a stream reads, recorded in its state so that a resume can tell whether it
//! still reads the data the run started on.
//!
//! A file is its path (as the source's globs resolve it), its size and a fingerprint of its
//! content: SHA-256 over its first and last 64 KiB, or the whole file when shorter.
//! Not the mtime: copying or re-staging a data set (`cp`, `rsync` without `-t`, an object-store
//! download) changes every mtime and no byte, and would make each such resume look like a
//! change. The sample costs two 64 KiB reads per file, once per start on one rank, and catches
//! a re-exported, truncated or appended file (parquet keeps its footer in the tail); an edit
//! confined to the middle of a large file that keeps its size goes unnoticed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::DataConfig;
use crate::error::{Error, Result};
use crate::remote::{is_url, RemoteObject, StorageConfig};
use crate::source::Source;

/// Bytes hashed at each end of a file.
pub const SAMPLE_BYTES: u64 = 64 * 1024;

/// One shard file as it was when the stream opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:` and the hex digest of the sampled bytes.
    pub fingerprint: String,
}

impl FileStamp {
    /// Size and fingerprint of `path` now. An object on a store is fingerprinted by its
    /// ETag (and version), which changes with any byte of it; a store that reports neither
    /// gets the sampled hash, read by ranged requests.
    pub fn of(path: &Path, storage: &StorageConfig) -> Result<FileStamp> {
        if is_url(path) {
            let object = RemoteObject::open(&path.to_string_lossy(), storage)?;
            let fingerprint = match object.identity() {
                Some(id) => id,
                None => sampled_hash(&mut object.cursor(0), object.size())
                    .map_err(|e| Error::io(path, e))?,
            };
            return Ok(FileStamp {
                path: path.to_path_buf(),
                size: object.size(),
                fingerprint,
            });
        }
        let io = |e| Error::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok(FileStamp {
            path: path.to_path_buf(),
            size,
            fingerprint: sampled_hash(&mut file, size).map_err(io)?,
        })
    }
}

/// `sha256:` and the hex digest of the first and last [`SAMPLE_BYTES`] of a `size`-byte file.
fn sampled_hash(file: &mut (impl Read + Seek), size: u64) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    if size <= 2 * SAMPLE_BYTES {
        hash_from(&mut hash, file, size)?;
    } else {
        hash_from(&mut hash, file, SAMPLE_BYTES)?;
        file.seek(SeekFrom::Start(size - SAMPLE_BYTES))?;
        hash_from(&mut hash, file, SAMPLE_BYTES)?;
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// Feeds the next `len` bytes of `reader` (fewer if it ends first) to `hash`.
fn hash_from(hash: &mut Sha256, reader: &mut impl Read, len: u64) -> std::io::Result<()> {
    let mut buf = Vec::new();
    reader.take(len).read_to_end(&mut buf)?;
    hash.update(&buf);
    Ok(())
}

/// The files of one source, in the source's (sorted) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFiles {
    pub source: String,
    pub files: Vec<FileStamp>,
}

/// The files of every source of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardList {
    pub sources: Vec<SourceFiles>,
}

impl ShardList {
    /// Stamps every file of already resolved sources.
    pub fn of(sources: &[Source], storage: &StorageConfig) -> Result<ShardList> {
        let sources = sources
            .iter()
            .map(|s| {
                let files = s
                    .files
                    .iter()
                    .map(|f| FileStamp::of(&f.path, storage))
                    .collect::<Result<Vec<_>>>()?;
                Ok(SourceFiles {
                    source: s.name.clone(),
                    files,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ShardList { sources })
    }

    /// Resolves the config's sources (their globs, now) and stamps their files.
    pub fn of_config(config: &DataConfig) -> Result<ShardList> {
        config.validate()?;
        let sources = config
            .sources
            .iter()
            .map(|s| Source::resolve(s, &config.storage))
            .collect::<Result<Vec<_>>>()?;
        Self::of(&sources, &config.storage)
    }

    /// The files of `source` (none when it is not in this list).
    pub fn files(&self, source: &str) -> &[FileStamp] {
        self.sources
            .iter()
            .find(|s| s.source == source)
            .map_or(&[], |s| s.files.as_slice())
    }

    /// What differs between `saved` and these files, source by source; `None` when nothing does.
    pub fn changes_since(&self, saved: &ShardList) -> Option<DataChange> {
        let mut names: Vec<&str> = saved.sources.iter().map(|s| s.source.as_str()).collect();
        for s in &self.sources {
            if !names.contains(&s.source.as_str()) {
                names.push(&s.source);
            }
        }
        let sources: Vec<SourceChange> = names
            .into_iter()
            .filter_map(|name| SourceChange::between(name, saved.files(name), self.files(name)))
            .collect();
        (!sources.is_empty()).then_some(DataChange { sources })
    }

    /// The verdict of a resume: the stream state recorded `saved` (`None` for states saved
    /// before file lists were recorded), the files are `self` now. A change is an error unless
    /// `accept`; an accepted change comes back so that the caller can move the stream's
    /// positions ([`crate::StreamState::adopt_files`]).
    pub fn check_resume(
        &self,
        saved: Option<&ShardList>,
        accept: bool,
    ) -> Result<Option<DataChange>> {
        let Some(saved) = saved else {
            tracing::warn!("the saved stream state records no shard files (written before they were recorded): cannot check that the resumed run reads the same data");
            return Ok(None);
        };
        let Some(change) = self.changes_since(saved) else {
            return Ok(None);
        };
        if !accept {
            return Err(Error::DataChanged { change });
        }
        tracing::warn!(%change, "the shard files changed since the checkpoint; continuing on them as asked");
        Ok(Some(change))
    }
}

/// How the shard files differ from those a stream state recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChange {
    pub sources: Vec<SourceChange>,
}

/// The differences within one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChange {
    pub source: String,
    pub removed: Vec<PathBuf>,
    pub added: Vec<PathBuf>,
    /// Same path, other size or content.
    pub changed: Vec<PathBuf>,
}

impl SourceChange {
    fn between(source: &str, saved: &[FileStamp], now: &[FileStamp]) -> Option<SourceChange> {
        let index = |files: &[FileStamp]| -> BTreeMap<PathBuf, (u64, String)> {
            files
                .iter()
                .map(|f| (f.path.clone(), (f.size, f.fingerprint.clone())))
                .collect()
        };
        let (before, after) = (index(saved), index(now));
        let removed: Vec<PathBuf> = before
            .keys()
            .filter(|p| !after.contains_key(*p))
            .cloned()
            .collect();
        let added: Vec<PathBuf> = after
            .keys()
            .filter(|p| !before.contains_key(*p))
            .cloned()
            .collect();
        let changed: Vec<PathBuf> = before
            .iter()
            .filter(|(p, stamp)| after.get(*p).is_some_and(|now| now != *stamp))
            .map(|(p, _)| p.clone())
            .collect();
        let none = removed.is_empty() && added.is_empty() && changed.is_empty();
        (!none).then(|| SourceChange {
            source: source.to_string(),
            removed,
            added,
            changed,
        })
    }
}

impl fmt::Display for DataChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.sources.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "source `{}`:", s.source)?;
            for (what, paths) in [
                ("removed", &s.removed),
                ("added", &s.added),
                ("changed", &s.changed),
            ] {
                if !paths.is_empty() {
                    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                    write!(f, " {what} {}", list.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_samples_head_and_tail_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.bin");
        let mut bytes = vec![7u8; 3 * SAMPLE_BYTES as usize];
        std::fs::write(&path, &bytes).expect("write");
        let a = FileStamp::of(&path, &StorageConfig::default()).expect("stamp");
        // The middle is not sampled: same stamp.
        bytes[SAMPLE_BYTES as usize + 10] = 8;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(
            FileStamp::of(&path, &StorageConfig::default()).expect("stamp"),
            a
        );
        // The tail is.
        *bytes.last_mut().expect("bytes") = 9;
        std::fs::write(&path, &bytes).expect("write");
        let b = FileStamp::of(&path, &StorageConfig::default()).expect("stamp");
        assert_eq!(b.size, a.size);
        assert_ne!(b.fingerprint, a.fingerprint);
        // A small file is hashed whole.
        std::fs::write(&path, b"abc").expect("write");
        let c = FileStamp::of(&path, &StorageConfig::default()).expect("stamp");
        std::fs::write(&path, b"abd").expect("write");
        assert_ne!(
            FileStamp::of(&path, &StorageConfig::default())
                .expect("stamp")
                .fingerprint,
            c.fingerprint
        );
    }

    #[test]
    fn changes_name_removed_added_and_changed_files() {
        let stamp = |p: &str, size| FileStamp {
            path: p.into(),
            size,
            fingerprint: "sha256:0".into(),
        };
        let list = |files| ShardList {
            sources: vec![SourceFiles {
                source: "s".into(),
                files,
            }],
        };
        let saved = list(vec![stamp("a", 1), stamp("b", 2), stamp("c", 3)]);
        assert!(saved.changes_since(&saved).is_none());
        let now = list(vec![stamp("a", 1), stamp("c", 4), stamp("d", 5)]);
        let change = now.changes_since(&saved).expect("a change");
        assert_eq!(
            change.to_string(),
            "source `s`: removed b added d changed c"
        );
    }
}
