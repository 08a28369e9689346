//! Read-only memory maps, so a rank can read its slice of a large checkpoint file without
//! loading the rest (ZeRO-1 resume reads 1/N of `optimizer.safetensors`).

use std::path::Path;

use crate::error::{Error, Result};

/// A file mapped read-only into memory.
#[derive(Debug)]
pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    /// Maps `path`. The caller promises what makes this sound: nothing truncates or rewrites
    /// the file while it is mapped. corenet checkpoints are written once into a fresh directory
    /// and never changed afterwards, which is the only use here.
    pub fn open_immutable(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: see above: the mapped file is never modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            op: "map",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MappedFile(map))
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_bytes_and_names_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("corenet-ffi-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bytes.bin");
        std::fs::write(&path, b"checkpoint").expect("write");
        assert_eq!(
            &*MappedFile::open_immutable(&path).expect("map"),
            b"checkpoint"
        );
        let missing = dir.join("missing.bin");
        let err = MappedFile::open_immutable(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing.bin"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
