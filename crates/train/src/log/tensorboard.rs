//! A small TensorBoard event-file writer (scalars only).
//!
//! Not tensorboard-rs, which pulls an old protobuf crate with a known advisory (see
//! docs/toolchain.md); the messages are encoded by `prost` from the few fields declared below,
//! the same crate that decodes SentencePiece models in corenet-data. The format:
//!
//! - The file is a sequence of TFRecords: `u64 length (LE)`, `u32 masked_crc32c(length bytes)`,
//!   `data`, `u32 masked_crc32c(data)`, where `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`.
//! - Each record is a serialized `tensorflow.Event` protobuf. The first one carries
//!   `file_version = "brain.Event:2"`; the others carry `wall_time` (double, field 1),
//!   `step` (int64, field 2) and `summary` (field 5), whose repeated `value` (field 1) each have
//!   `tag` (string, field 1) and `simple_value` (float, field 2). A session's first event
//!   carries `session_log` (field 7) with `status = START`, which tells TensorBoard to drop what
//!   an earlier, crashed session logged from that step on.
//!
//! The writer buffers; call [`EventWriter::flush`] at every log step so TensorBoard (which tails
//! the file) sees the values. Dropping the writer flushes too. TensorBoard's own
//! `EventFileLoader` reads these files in the tests (`crates/train/tests/tensorboard.rs`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::error::{Error, Result};

/// What TensorBoard expects in the first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Constant added after rotating a CRC, from the TFRecord format.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord header: 8-byte length + 4-byte masked CRC of it.
pub const HEADER_LEN: usize = 12;

/// Masked CRC32C as TFRecord stores it. Masking exists because computing the CRC of a string
/// that itself contains embedded CRCs is problematic; we only need to reproduce it.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    // `(crc >> 15) | (crc << 17)` in the format's description.
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// Appends scalar events to a new `events.out.tfevents.<unix secs>.<hostname>` file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a fresh event file in it, and writes the file-version record.
    ///
    /// If a file of that name already exists (two writers started in the same second), a
    /// `.<pid>[.<n>]` suffix keeps them apart; TensorBoard reads every file with `tfevents` in
    /// its name.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // A '/' in a host name would turn the file name into a path.
        let host = gethostname::gethostname()
            .to_string_lossy()
            .replace(['/', '\\'], "_");
        let base = format!("events.out.tfevents.{secs:010}.{host}");
        let pid = std::process::id();
        let candidates = std::iter::once(base.clone())
            .chain(std::iter::once(format!("{base}.{pid}")))
            .chain((1..100).map(|n| format!("{base}.{pid}.{n}")));
        let mut last_err = None;
        for name in candidates {
            let path = dir.join(&name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut writer = Self {
                        path,
                        out: BufWriter::new(file),
                    };
                    let event = Event {
                        wall_time: wall_time_now(),
                        file_version: Some(FILE_VERSION.into()),
                        ..Event::default()
                    };
                    writer.write_record(&event.encode_to_vec())?;
                    writer.flush()?;
                    tracing::debug!(path = %writer.path.display(), "created TensorBoard event file");
                    return Ok(writer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last_err = Some((path, e))
                }
                Err(e) => return Err(Error::io("create", path, e)),
            }
        }
        let (path, e) =
            last_err.unwrap_or_else(|| (dir.join(base), std::io::ErrorKind::AlreadyExists.into()));
        Err(Error::io("create", path, e))
    }

    /// Path of the event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one scalar event (`tag` at `step`, wall time now).
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Writes several scalars of the same step as one event (one record instead of N).
    pub fn add_scalars(&mut self, step: i64, scalars: &[(&str, f32)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let value = scalars
            .iter()
            .map(|&(tag, value)| SummaryValue {
                tag: tag.into(),
                simple_value: Some(value),
            })
            .collect();
        let event = Event {
            wall_time: wall_time_now(),
            step,
            summary: Some(Summary { value }),
            ..Event::default()
        };
        self.write_record(&event.encode_to_vec())
    }

    /// Marks a (re)start whose first logged step is `step`. TensorBoard then drops every value
    /// an earlier session logged at `step` or later: after a crash and resume from an older
    /// checkpoint, the steps replayed are shown once, with this session's values.
    pub fn start_session(&mut self, step: i64) -> Result<()> {
        let event = Event {
            wall_time: wall_time_now(),
            step,
            session_log: Some(SessionLog {
                status: SESSION_START,
            }),
            ..Event::default()
        };
        self.write_record(&event.encode_to_vec())
    }

    /// Pushes buffered records to the OS so a running TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("flush", &self.path, e))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(HEADER_LEN + data.len() + 4);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.out
            .write_all(&frame)
            .map_err(|e| Error::io("write", &self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "could not flush TensorBoard event file on drop");
        }
    }
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn wall_time_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `tensorflow.Event`, the fields a scalar log needs (`what` is a oneof of `file_version`,
/// `summary` and `session_log`; at most one is set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.SessionLog`: only `status` is written.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionLog.SessionStatus`; [`SESSION_START`] marks a (re)start.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`; other kinds of value (images, histograms, tensors) are not
/// declared, so a reader skips them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_rotate)] // spelled as in the format's description, on purpose
    fn masked_crc_known_values() {
        // CRC32C("123456789") = 0xe3069283 is the standard check value; the mask is a fixed
        // rotate-and-add of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let c: u32 = 0xe306_9283;
        assert_eq!(
            masked_crc32c(b"123456789"),
            ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8)
        );
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    #[test]
    fn the_wire_bytes_are_the_hand_rolled_ones() {
        // wall_time (fixed64, field 1), step (varint, field 2), summary (field 5) holding one
        // value with tag "x" (field 1) and simple_value 2.0 (fixed32, field 2): the layout the
        // earlier hand-written encoder produced, which TensorBoard reads.
        let event = Event {
            wall_time: 1.5,
            step: 300,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "x".into(),
                    simple_value: Some(2.0),
                }],
            }),
            ..Event::default()
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[
            0x10, 0xac, 0x02, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'x', 0x15,
        ]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(event.encode_to_vec(), want);
        // A step of 0 is left out, as proto3 leaves out defaults.
        let header = Event {
            wall_time: 1.5,
            file_version: Some(FILE_VERSION.into()),
            ..Event::default()
        };
        let bytes = header.encode_to_vec();
        assert_eq!(bytes[9], 0x1a, "file_version follows wall_time directly");
    }
}
