//! Reads TensorBoard event files back for the tests: TFRecord framing with both CRCs checked,
//! then the `Event` messages decoded with the writer's own prost structs. Errors name the file
//! and the byte offset of the bad record.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use corenet_train::log::tensorboard::{masked_crc32c, Event as EventProto, HEADER_LEN};
use prost::Message;

/// One decoded event: the file-version header or a set of scalars.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
}

/// Every record of a TFRecord file; a bad CRC or a partial trailing record is an error.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let bad = |offset: usize, reason: String| {
        anyhow!("{}: bad record at byte {offset}: {reason}", path.display())
    };
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let header = bytes.get(pos..pos + HEADER_LEN).ok_or_else(|| {
            bad(
                pos,
                format!("truncated header ({} bytes left)", bytes.len() - pos),
            )
        })?;
        let (len_bytes, len_crc) = header.split_at(8);
        let want = u32::from_le_bytes(len_crc.try_into()?);
        let got = masked_crc32c(len_bytes);
        if got != want {
            return Err(bad(
                pos,
                format!("length CRC mismatch (stored {want:#010x}, computed {got:#010x})"),
            ));
        }
        let len = u64::from_le_bytes(len_bytes.try_into()?);
        let start = pos + HEADER_LEN;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&end| end.checked_add(4).is_some_and(|e| e <= bytes.len()))
            .ok_or_else(|| {
                bad(
                    pos,
                    format!("record of {len} bytes runs past the end of the file"),
                )
            })?;
        let data = &bytes[start..end];
        let want = u32::from_le_bytes(bytes[end..end + 4].try_into()?);
        let got = masked_crc32c(data);
        if got != want {
            return Err(bad(
                pos,
                format!("data CRC mismatch (stored {want:#010x}, computed {got:#010x})"),
            ));
        }
        records.push(data.to_vec());
        pos = end + 4;
    }
    Ok(records)
}

/// Every event of a file, scalars only (other summary kinds are skipped).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let mut offset = 0usize;
    let mut events = Vec::new();
    for record in read_records(path)? {
        let proto = EventProto::decode(record.as_slice()).map_err(|e| {
            anyhow!(
                "{}: bad record at byte {offset}: bad Event protobuf: {e}",
                path.display()
            )
        })?;
        let scalars = proto
            .summary
            .iter()
            .flat_map(|s| &s.value)
            .filter_map(|v| v.simple_value.map(|x| (v.tag.clone(), x)))
            .collect();
        events.push(Event {
            wall_time: proto.wall_time,
            step: proto.step,
            file_version: proto.file_version,
            scalars,
        });
        offset += HEADER_LEN + record.len() + 4;
    }
    Ok(events)
}
