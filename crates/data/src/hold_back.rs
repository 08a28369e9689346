//! Documents held back from training for validation. Whether a document is held back depends
//! only on its file's path (as the source's globs list it) and its position in that file, so
//! every rank, worker, world size and resume agrees, and validation finds exactly the
//! documents that training passes over without any list of them being stored.

use std::path::Path;

use crate::error::Result;
use crate::read::{self, OpenSpec, Position, ReadItem, Stride};
use crate::source::Source;

/// The held-back part of a source: a fraction of its documents in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldBack {
    fraction: f64,
}

impl HoldBack {
    pub fn new(fraction: f64) -> HoldBack {
        HoldBack { fraction }
    }

    /// Nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.fraction <= 0.0
    }

    /// Whether the document starting at `position` of `path` is held back.
    pub fn holds(&self, path: &Path, position: Position) -> bool {
        if self.is_empty() {
            return false;
        }
        // 53 bits of a 64-bit FNV-1a hash as a uniform number in [0, 1).
        let unit = (document_hash(path, position) >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.fraction
    }
}

/// FNV-1a over the path's bytes and the position's numbers: stable across platforms and
/// releases (std's hasher is not), and uniform enough for a sampling decision.
fn document_hash(path: &Path, position: Position) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let (kind, a, b) = match position {
        Position::Line { line, byte } => (0u8, line, byte),
        Position::Row { row_group, row } => (1u8, row_group, row),
    };
    let path = path.to_string_lossy();
    let bytes = path
        .as_bytes()
        .iter()
        .copied()
        .chain([0xff, kind])
        .chain(a.to_le_bytes())
        .chain(b.to_le_bytes());
    bytes.fold(OFFSET, |h, byte| (h ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// Which documents of a source [`for_each_document`] visits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DocumentFilter {
    /// Every document (a held-out source of its own).
    All,
    /// Only the documents training passes over.
    HeldBack(HoldBack),
}

/// Calls `visit` with the text of each selected document of `source`, file by file in the
/// source's (sorted) order, until it returns false or the files end. Records that cannot be
/// read are skipped and counted in the returned number, as training skips them.
pub fn for_each_document(
    source: &Source,
    filter: DocumentFilter,
    max_record_bytes: usize,
    storage: &crate::remote::StorageConfig,
    mut visit: impl FnMut(&str) -> Result<bool>,
) -> Result<u64> {
    let mut bad = 0;
    for file in &source.files {
        let spec = OpenSpec {
            path: &file.path,
            format: file.format,
            text_key: &source.text_key,
            template: source.template,
            stride: Stride::ALL,
            max_record_bytes,
            storage,
        };
        let mut reader = read::open(&spec, Position::start(file.format))?;
        while let Some(item) = reader.next_item()? {
            let record = match item {
                ReadItem::Doc(record) => record,
                ReadItem::Bad(e) => {
                    tracing::warn!(source = %source.name, error = %e, "validation skips a bad record");
                    bad += 1;
                    continue;
                }
            };
            let selected = match filter {
                DocumentFilter::All => true,
                DocumentFilter::HeldBack(hold) => hold.holds(&file.path, record.start),
            };
            if selected && !visit(&record.text)? {
                return Ok(bad);
            }
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_back_share_is_close_to_the_fraction_and_stable() {
        let hold = HoldBack::new(0.1);
        let path = Path::new("data/rw/part-00001.parquet");
        let held = (0..20_000u64)
            .filter(|&row| {
                hold.holds(
                    path,
                    Position::Row {
                        row_group: row / 100,
                        row: row % 100,
                    },
                )
            })
            .count();
        assert!((1_800..2_200).contains(&held), "{held} of 20000");
        // The decision is a pure function of path and position.
        let at = Position::Line { line: 7, byte: 512 };
        assert_eq!(hold.holds(path, at), hold.holds(path, at));
        assert!(!HoldBack::new(0.0).holds(path, at));
        // Pinned: a change of hash would silently move documents between train and validation.
        assert_eq!(document_hash(path, at), 0xd7b6_ab57_de25_3a31);
    }
}
