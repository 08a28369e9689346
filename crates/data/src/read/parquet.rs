//! Parquet reader: reads one row group at a time, projected to the text column, in small
//! record batches, so memory stays bounded by one batch of rows.

use std::path::PathBuf;

use arrow::array::{Array, ArrayRef, AsArray};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use super::{
    bad_record, corrupt, OpenSpec, Position, ReadItem, Record, RecordReader, ShardBytes, Stride,
};
use crate::error::Result;

const BATCH_ROWS: usize = 256;

/// Streaming reader of one text column.
pub struct ParquetReader {
    path: PathBuf,
    file: ShardBytes,
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    /// Row groups still to read, in order.
    groups: std::collections::VecDeque<usize>,
    /// Row-level stride when there are fewer row groups than readers; else row groups are split.
    row_stride: Option<Stride>,
    group_first_row: Vec<u64>,
    first_offset: u64,
    current: Option<GroupCursor>,
}

/// Reading state inside one row group.
struct GroupCursor {
    group: usize,
    row: u64,
    batches: ParquetRecordBatchReader,
    array: Option<ArrayRef>,
    index: usize,
}

impl ParquetReader {
    /// Opens the file at row `row` of row group `row_group`.
    pub fn open(spec: &OpenSpec<'_>, row_group: u64, row: u64) -> Result<Self> {
        let path = spec.path;
        let start = Position::Row { row_group, row };
        let file = ShardBytes::open(path, spec.storage)?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| corrupt(path, start, e))?;
        let col = meta
            .schema()
            .index_of(spec.text_key)
            .map_err(|_| corrupt(path, start, format!("no column `{}`", spec.text_key)))?;
        let mask = ProjectionMask::roots(meta.parquet_schema(), [col]);
        let n_groups = meta.metadata().num_row_groups();
        let mut group_first_row = Vec::with_capacity(n_groups);
        let mut total = 0u64;
        for g in meta.metadata().row_groups() {
            group_first_row.push(total);
            total += g.num_rows().max(0) as u64;
        }
        let split_groups = n_groups >= spec.stride.count;
        let groups = (row_group as usize..n_groups)
            .filter(|g| !split_groups || spec.stride.owns(*g as u64))
            .collect();
        Ok(ParquetReader {
            path: path.to_path_buf(),
            file,
            meta,
            mask,
            groups,
            row_stride: (!split_groups).then_some(spec.stride),
            group_first_row,
            first_offset: row,
            current: None,
        })
    }

    /// Opens the next row group, or returns false when none is left.
    fn open_next_group(&mut self) -> Result<bool> {
        let Some(group) = self.groups.pop_front() else {
            return Ok(false);
        };
        // Only the first group opened after a resume starts mid-way.
        let offset = std::mem::take(&mut self.first_offset);
        let start = Position::Row {
            row_group: group as u64,
            row: offset,
        };
        let file = self.file.try_clone(&self.path)?;
        let batches = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_projection(self.mask.clone())
            .with_row_groups(vec![group])
            .with_batch_size(BATCH_ROWS)
            .with_offset(offset as usize)
            .build()
            .map_err(|e| corrupt(&self.path, start, e))?;
        self.current = Some(GroupCursor {
            group,
            row: offset,
            batches,
            array: None,
            index: 0,
        });
        Ok(true)
    }

    /// Next row of the current group: `None` when the group is done.
    fn next_in_group(&mut self) -> Option<ReadItem> {
        let cur = self.current.as_mut()?;
        loop {
            if let Some(array) = &cur.array {
                if cur.index < array.len() {
                    let (i, row) = (cur.index, cur.row);
                    cur.index += 1;
                    cur.row += 1;
                    let global = self.group_first_row.get(cur.group).copied().unwrap_or(0) + row;
                    if self.row_stride.is_some_and(|s| !s.owns(global)) {
                        continue;
                    }
                    return Some(row_item(&self.path, array, i, cur.group as u64, row));
                }
            }
            match cur.batches.next() {
                Some(Ok(batch)) => {
                    cur.array = Some(batch.column(0).clone());
                    cur.index = 0;
                }
                Some(Err(e)) => {
                    // The rest of this row group is unreadable; later groups may be fine.
                    let at = Position::Row {
                        row_group: cur.group as u64,
                        row: cur.row,
                    };
                    let msg = format!("unreadable row group, rest skipped: {e}");
                    self.current = None;
                    return Some(ReadItem::Bad(bad_record(&self.path, at, msg)));
                }
                None => {
                    self.current = None;
                    return None;
                }
            }
        }
    }
}

/// Turns row `i` of a string column into a record.
fn row_item(path: &std::path::Path, array: &ArrayRef, i: usize, group: u64, row: u64) -> ReadItem {
    let start = Position::Row {
        row_group: group,
        row,
    };
    let end = Position::Row {
        row_group: group,
        row: row + 1,
    };
    if array.is_null(i) {
        return ReadItem::Bad(bad_record(path, start, "null text"));
    }
    let text = if let Some(a) = array.as_string_opt::<i32>() {
        a.value(i)
    } else if let Some(a) = array.as_string_opt::<i64>() {
        a.value(i)
    } else if let Some(a) = array.as_string_view_opt() {
        a.value(i)
    } else {
        return ReadItem::Bad(bad_record(
            path,
            start,
            format!("text column is {}, not a string", array.data_type()),
        ));
    };
    ReadItem::Doc(Record {
        start,
        end,
        text: text.to_string(),
        hidden: Vec::new(),
        rejected: None,
    })
}

impl RecordReader for ParquetReader {
    fn next_item(&mut self) -> Result<Option<ReadItem>> {
        loop {
            if let Some(item) = self.next_in_group() {
                return Ok(Some(item));
            }
            if !self.open_next_group()? {
                return Ok(None);
            }
        }
    }
}
