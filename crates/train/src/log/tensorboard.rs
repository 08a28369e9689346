//! A small TensorBoard event-file writer (scalars only) and a verifying reader.
//!
//! Written by hand instead of using tensorboard-rs, which pulls a protobuf crate with a known
//! advisory (toolchain.md §8). The format is small:
//!
//! - The file is a sequence of TFRecords: `u64 length (LE)`, `u32 masked_crc32c(length bytes)`,
//!   `data`, `u32 masked_crc32c(data)`, where `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`.
//! - Each record is a serialized `tensorflow.Event` protobuf. The first one carries
//!   `file_version = "brain.Event:2"`; the others carry `wall_time` (double, field 1),
//!   `step` (int64, field 2) and `summary` (field 5), whose repeated `value` (field 1) each have
//!   `tag` (string, field 1) and `simple_value` (float, field 2).
//!
//! The writer buffers; call [`EventWriter::flush`] at every log step so TensorBoard (which tails
//! the file) sees the values. Dropping the writer flushes too.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// What TensorBoard expects in the first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Constant added after rotating a CRC, from the TFRecord format.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord header: 8-byte length + 4-byte masked CRC of it.
const HEADER_LEN: usize = 12;

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
                    let event =
                        encode_event(wall_time_now(), 0, EventBody::FileVersion(FILE_VERSION));
                    writer.write_record(&event)?;
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
        let event = encode_event(wall_time_now(), step, EventBody::Scalars(scalars));
        self.write_record(&event)
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

// ---------------------------------------------------------------------------------------------
// Protobuf encoding of the few fields we need.

/// Wire types from the protobuf encoding spec.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(&'a str, f32)]),
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn encode_event(wall_time: f64, step: i64, body: EventBody<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    put_key(&mut buf, 1, WIRE_FIXED64);
    buf.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(&mut buf, 2, WIRE_VARINT);
        // int64 is encoded as the two's-complement u64 (negative steps take 10 bytes).
        put_varint(&mut buf, step as u64);
    }
    match body {
        EventBody::FileVersion(v) => put_bytes(&mut buf, 3, v.as_bytes()),
        EventBody::Scalars(scalars) => {
            let mut summary = Vec::new();
            for (tag, value) in scalars {
                let mut v = Vec::with_capacity(tag.len() + 8);
                put_bytes(&mut v, 1, tag.as_bytes());
                put_key(&mut v, 2, WIRE_FIXED32);
                v.extend_from_slice(&value.to_le_bytes());
                put_bytes(&mut summary, 1, &v);
            }
            put_bytes(&mut buf, 5, &summary);
        }
    }
    buf
}

// ---------------------------------------------------------------------------------------------
// Reading back (tests, tools).

/// Reads every record of a TFRecord file, checking the length CRC and data CRC of each.
/// Errors give the byte offset of the bad record; a partial trailing record is an error too.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let bad = |offset: usize, reason: String| Error::Record {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
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
        let want = u32::from_le_bytes(len_crc.try_into().map_err(|_| bad(pos, "header".into()))?);
        let got = masked_crc32c(len_bytes);
        if got != want {
            return Err(bad(
                pos,
                format!("length CRC mismatch (stored {want:#010x}, computed {got:#010x})"),
            ));
        }
        let len = u64::from_le_bytes(
            len_bytes
                .try_into()
                .map_err(|_| bad(pos, "header".into()))?,
        );
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
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[end..end + 4]);
        let (want, got) = (u32::from_le_bytes(crc), masked_crc32c(data));
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

/// One decoded event: either the file-version header or a set of scalars.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
}

/// Reads and decodes every event of a file written by [`EventWriter`] (or any TensorBoard
/// writer, as far as scalars go; other summary kinds are skipped).
pub fn read_events(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    let path = path.as_ref();
    let records = read_records(path)?;
    let mut offset = 0u64;
    let mut events = Vec::with_capacity(records.len());
    for record in &records {
        let event = decode_event(record).map_err(|reason| Error::Record {
            path: path.to_path_buf(),
            offset,
            reason: format!("bad Event protobuf: {reason}"),
        })?;
        events.push(event);
        offset += (HEADER_LEN + record.len() + 4) as u64;
    }
    Ok(events)
}

/// Protobuf field with its payload; only the wire types TensorBoard events use.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Len(&'a [u8]),
    Fixed32([u8; 4]),
}

struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next `(field number, payload)`, or None at the end of the message.
    fn next_field(&mut self) -> std::result::Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match (key & 7) as u8 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_FIXED64 => Field::Fixed64(self.take(8)?.try_into().map_err(|_| "fixed64")?),
            WIRE_LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflows usize")?;
                Field::Len(self.take(n)?)
            }
            WIRE_FIXED32 => Field::Fixed32(self.take(4)?.try_into().map_err(|_| "fixed32")?),
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn decode_event(bytes: &[u8]) -> std::result::Result<Event, String> {
    let mut event = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    let mut r = ProtoReader::new(bytes);
    while let Some((number, field)) = r.next_field()? {
        match (number, field) {
            (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Len(s)) => {
                event.file_version =
                    Some(String::from_utf8(s.to_vec()).map_err(|_| "file_version is not UTF-8")?)
            }
            (5, Field::Len(summary)) => decode_summary(summary, &mut event.scalars)?,
            (1 | 2 | 3 | 5, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {} // Other Event fields (graphs, log messages, ...) are not ours to interpret.
        }
    }
    Ok(event)
}

fn decode_summary(bytes: &[u8], out: &mut Vec<(String, f32)>) -> std::result::Result<(), String> {
    let mut r = ProtoReader::new(bytes);
    while let Some((number, field)) = r.next_field()? {
        if let (1, Field::Len(value)) = (number, field) {
            let mut tag = None;
            let mut simple = None;
            let mut vr = ProtoReader::new(value);
            while let Some((n, f)) = vr.next_field()? {
                match (n, f) {
                    (1, Field::Len(s)) => {
                        tag = Some(String::from_utf8(s.to_vec()).map_err(|_| "tag is not UTF-8")?)
                    }
                    (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                    _ => {}
                }
            }
            // Values without simple_value (images, histograms, tensors) are skipped.
            if let (Some(tag), Some(v)) = (tag, simple) {
                out.push((tag, v));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_file(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.remove(0)
    }

    fn write_sample(dir: &Path) -> PathBuf {
        let mut w = EventWriter::create(dir).expect("create writer");
        for step in 0..5i64 {
            w.add_scalar("loss/total_loss", 10.0 - step as f32 * 0.5, step)
                .expect("write");
            w.add_scalars(
                step,
                &[
                    ("LR/Group-0", 1e-6 * (step + 1) as f32),
                    ("tokens_per_s", 1234.5),
                ],
            )
            .expect("write");
        }
        w.add_scalar("neg_step", -1.0, -7).expect("write");
        w.flush().expect("flush");
        w.path().to_path_buf()
    }

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
    fn file_name_and_first_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        assert_eq!(event_file(dir.path()), path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let rest = name.strip_prefix("events.out.tfevents.").expect("prefix");
        let (secs, host) = rest.split_once('.').expect("secs.host");
        assert!(secs.len() >= 10 && secs.parse::<u64>().is_ok(), "{secs}");
        assert!(!host.is_empty());

        let events = read_events(&path).expect("read back");
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].scalars.is_empty());
        assert!(events[0].wall_time > 1.6e9);
    }

    #[test]
    fn write_then_read_back_scalars() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        let events = read_events(&path).expect("read back");
        assert_eq!(events.len(), 1 + 5 * 2 + 1);
        let mut wall = 0.0;
        for (i, step) in (0..5i64).enumerate() {
            let a = &events[1 + 2 * i];
            let b = &events[2 + 2 * i];
            assert_eq!(a.step, step);
            assert_eq!(
                a.scalars,
                vec![("loss/total_loss".to_string(), 10.0 - step as f32 * 0.5)]
            );
            assert_eq!(b.step, step);
            assert_eq!(
                b.scalars,
                vec![
                    ("LR/Group-0".to_string(), 1e-6 * (step + 1) as f32),
                    ("tokens_per_s".to_string(), 1234.5)
                ]
            );
            assert!(a.wall_time >= wall && b.wall_time >= a.wall_time);
            wall = b.wall_time;
        }
        let last = events.last().expect("last");
        assert_eq!((last.step, last.scalars[0].1), (-7, -1.0));
    }

    #[test]
    fn corrupt_byte_is_a_crc_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        let clean = std::fs::read(&path).expect("read");
        let n_records = read_records(&path).expect("clean file reads").len();
        assert_eq!(n_records, 12);

        // A byte inside a record's data (second record, after its 12-byte header).
        let first_len = u64::from_le_bytes(clean[..8].try_into().expect("8 bytes")) as usize;
        let second = HEADER_LEN + first_len + 4;
        for (at, what) in [
            (second + HEADER_LEN + 3, "data CRC"),
            (second + 1, "length CRC"),
            (2, "length CRC"),
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x20;
            std::fs::write(&path, &bytes).expect("write corrupted");
            let err = read_records(&path)
                .expect_err("corruption must be detected")
                .to_string();
            assert!(err.contains(what), "flip at {at}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }

        // A flipped stored CRC, and a truncated tail.
        let mut bytes = clean.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(read_records(&path).is_err_and(|e| e.to_string().contains("data CRC")));
        std::fs::write(&path, &clean[..clean.len() - 2]).expect("write");
        assert!(read_records(&path).is_err_and(|e| e.to_string().contains("past the end")));
        std::fs::write(&path, &clean[..clean.len() - 5]).expect("write");
        assert!(read_records(&path).is_err());
    }

    #[test]
    fn two_writers_in_one_directory_get_distinct_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = EventWriter::create(dir.path()).expect("a");
        let b = EventWriter::create(dir.path()).expect("b");
        assert_ne!(a.path(), b.path());
        drop((a, b));
        assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 2);
    }

    #[test]
    fn varint_encoding_of_negative_and_large_steps_round_trips() {
        for step in [0i64, 1, 127, 128, 300, 350_000, i64::MAX, -1, i64::MIN] {
            let e = decode_event(&encode_event(1.5, step, EventBody::Scalars(&[("x", 2.0)])))
                .expect("decode");
            assert_eq!((e.step, e.wall_time, e.scalars.len()), (step, 1.5, 1));
        }
        assert!(
            decode_event(&[0x0a, 0x05, 0x01]).is_err(),
            "truncated length-delimited field"
        );
    }

    /// Finds a Python that can `import tensorboard`: $CORENET_PYTHON, the repo's reference venv,
    /// then python3.
    fn python_with_tensorboard() -> Option<PathBuf> {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref/bin/python");
        let candidates = std::env::var_os("CORENET_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([venv, PathBuf::from("python3")]);
        for python in candidates {
            let ok = std::process::Command::new(&python)
                .args(["-c", "import tensorboard"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Some(python);
            }
        }
        None
    }

    #[test]
    fn tensorboards_own_reader_accepts_our_file() {
        let Some(python) = python_with_tensorboard() else {
            assert!(
                std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
                "no python with the tensorboard package, and CORENET_REQUIRE_REFERENCE is set"
            );
            eprintln!(
                "SKIP: no python with the tensorboard package; TensorBoard-reader check not run"
            );
            tracing::warn!(
                "no python with the tensorboard package; TensorBoard-reader check skipped"
            );
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_sample(dir.path());
        // EventFileLoader is what TensorBoard's backend uses; it checks both CRCs of each record.
        let script = r#"
import sys, json
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util
out = []
for ev in EventFileLoader(sys.argv[1]).Load():
    kind = ev.WhichOneof("what")
    if kind == "file_version":
        out.append({"file_version": ev.file_version, "step": ev.step})
    elif kind == "summary":
        for v in ev.summary.value:
            # EventFileLoader migrates simple_value into a scalar tensor tagged for the
            # "scalars" plugin, which is exactly how TensorBoard will display it.
            if v.WhichOneof("value") == "simple_value":
                value, plugin = v.simple_value, "scalars"
            else:
                value, plugin = tensor_util.make_ndarray(v.tensor).item(), v.metadata.plugin_data.plugin_name
            out.append({"step": ev.step, "tag": v.tag, "value": value, "plugin": plugin})
print(json.dumps(out))
"#;
        let output = std::process::Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(&path)
            .output()
            .expect("run python");
        assert!(
            output.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).expect("json from python");
        assert_eq!(got[0]["file_version"], FILE_VERSION);

        let ours = read_events(&path).expect("read back");
        let ours: Vec<(i64, String, f32)> = ours
            .iter()
            .flat_map(|e| e.scalars.iter().map(move |(t, v)| (e.step, t.clone(), *v)))
            .collect();
        let theirs: Vec<(i64, String, f32)> = got[1..]
            .iter()
            .map(|v| {
                (
                    v["step"].as_i64().expect("step"),
                    v["tag"].as_str().expect("tag").to_string(),
                    v["value"].as_f64().expect("value") as f32,
                )
            })
            .collect();
        assert_eq!(theirs.len(), 5 * 3 + 1);
        assert!(got[1..].iter().all(|v| v["plugin"] == "scalars"), "{got:?}");
        assert_eq!(ours, theirs);
        eprintln!(
            "tensorboard's EventFileLoader ({}) read {} scalars",
            python.display(),
            theirs.len()
        );
    }
}
