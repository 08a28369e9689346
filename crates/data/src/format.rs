//! Shard formats and their inference from file names.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The on-disk layout of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Apache Parquet; the text is one (string) column. RefinedWeb, deduplicated PILE.
    Parquet,
    /// Plain JSON lines. RedPajama.
    Jsonl,
    /// Zstandard-compressed JSON lines. RedPajama, PILE.
    JsonlZst,
    /// Gzip-compressed JSON lines (`.json.gz` or `.jsonl.gz`). Dolma.
    JsonGz,
}

impl Format {
    /// Infers the format from the file name's extension.
    pub fn infer(path: &Path) -> Result<Format> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let table = [
            (".parquet", Format::Parquet),
            (".jsonl.zst", Format::JsonlZst),
            (".json.zst", Format::JsonlZst),
            (".jsonl.gz", Format::JsonGz),
            (".json.gz", Format::JsonGz),
            (".jsonl", Format::Jsonl),
        ];
        table
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix))
            .map(|(_, f)| *f)
            .ok_or_else(|| Error::UnknownFormat {
                path: path.to_path_buf(),
            })
    }

    /// True for formats read as lines (possibly through a decompressor).
    pub fn is_lines(self) -> bool {
        !matches!(self, Format::Parquet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_every_extension() {
        let cases = [
            ("a/refinedweb-00001-of-05534.parquet", Format::Parquet),
            ("x.jsonl", Format::Jsonl),
            ("x.jsonl.zst", Format::JsonlZst),
            ("books-0001.json.gz", Format::JsonGz),
            ("x.JSONL.GZ", Format::JsonGz),
        ];
        for (p, f) in cases {
            assert_eq!(Format::infer(Path::new(p)).ok(), Some(f), "{p}");
        }
        assert!(Format::infer(Path::new("x.txt")).is_err());
    }
}
