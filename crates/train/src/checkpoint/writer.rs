//! Writing a checkpoint from every rank, in the background or not, with a two-phase commit.
//!
//! The step loop hands over a [`Snapshot`] (host copies of this rank's part) and goes on; a
//! thread writes the files, fsyncs and hashes them. The ranks agree through the process
//! group's key store, which a thread may use while the step loop runs collectives:
//!
//! 1. rank 0 opens the temporary directory (removing debris) and says so (`open`);
//! 2. every rank writes its part there, fsyncs and hashes it, and reports the digests or its
//!    error (`part/R`);
//! 3. rank 0 checks the listing against every report, writes the manifest, renames the
//!    directory into place (atomic), and publishes the outcome (`commit`), which every rank's
//!    writer returns.
//!
//! Until step 3 renames it, nothing of the save is visible: a crash of any rank (or a full disk)
//! leaves the previous checkpoint the newest. One save is in flight at a time: starting
//! another waits for it, and the wait counts as the step loop's stall.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use corenet_ffi::SharedStore;
use corenet_model::manifest::{sync_and_digest, FileDigest};

use crate::checkpoint::snapshot::Snapshot;
use crate::checkpoint::store::CheckpointStore;
use crate::error::{Error, Result};

/// The other ranks of a data-parallel save, reached through the group's key store.
#[derive(Clone)]
pub(crate) struct Peers {
    pub store: Arc<SharedStore>,
    pub rank: usize,
    pub world: usize,
}

/// One save: this rank's files and, on rank 0, the manifest's metadata.
pub(crate) struct SaveJob {
    pub step: u64,
    pub snapshot: Snapshot,
    pub metadata: serde_json::Map<String, Value>,
    /// Test hook: what goes wrong with this rank's write.
    pub fault: Option<FaultKind>,
}

/// A fault injected into one rank's write of the checkpoint of `step` (tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointFault {
    pub step: u64,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// The first file is cut short by ENOSPC, as on a full disk.
    DiskFull,
    /// The rank's part is written, then the writer waits this long before reporting it (a
    /// slow disk: the window a test kills a rank in).
    Slow(Duration),
}

/// What a finished save cost (rank 0 knows every rank's write).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaveRecord {
    pub step: u64,
    /// Seconds the step loop was blocked by this save (copying to host, waiting for the save
    /// before it, and in the foreground mode the write itself).
    pub stall_s: f64,
    /// Seconds from the start of the write to the commit, on the slowest rank.
    pub write_s: f64,
    /// Bytes written by all ranks.
    pub bytes: u64,
    pub background: bool,
}

struct InFlight {
    step: u64,
    stall_s: f64,
    handle: JoinHandle<Result<(f64, u64)>>,
}

/// Saves checkpoints for one rank; see the module documentation.
pub(crate) struct CheckpointWriter {
    store: CheckpointStore,
    peers: Option<Peers>,
    background: bool,
    /// Saves started by this process: the same on every rank, so it names the store keys.
    seq: u64,
    in_flight: Option<InFlight>,
}

impl CheckpointWriter {
    pub fn new(store: CheckpointStore, peers: Option<Peers>, background: bool) -> Self {
        CheckpointWriter {
            store,
            peers,
            background,
            seq: 0,
            in_flight: None,
        }
    }

    /// Starts writing `job`. `began` is when the step loop stopped for this save; the record
    /// of a background save comes later, from [`Self::poll`] or [`Self::wait`]; a foreground
    /// save returns its record now. A save still in flight must have been waited for.
    pub fn start(&mut self, job: SaveJob, began: Instant) -> Option<Result<SaveRecord>> {
        debug_assert!(self.in_flight.is_none(), "one save in flight at a time");
        self.seq += 1;
        let step = job.step;
        let (store, seq) = (self.store.clone(), self.seq);
        let peers = self.peers.clone();
        let run = move || write_and_commit(&store, peers.as_ref(), seq, job);
        if !self.background {
            let outcome = run();
            return Some(outcome.map(|(write_s, bytes)| SaveRecord {
                step,
                stall_s: began.elapsed().as_secs_f64(),
                write_s,
                bytes,
                background: false,
            }));
        }
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-{step}"))
            .spawn(run);
        match handle {
            Ok(handle) => {
                self.in_flight = Some(InFlight {
                    step,
                    stall_s: began.elapsed().as_secs_f64(),
                    handle,
                });
                None
            }
            Err(e) => Some(Err(Error::io(
                "start checkpoint writer for",
                self.store.root(),
                e,
            ))),
        }
    }

    /// The outcome of the save in flight if it has finished; never blocks.
    pub fn poll(&mut self) -> Option<Result<SaveRecord>> {
        if self.in_flight.as_ref()?.handle.is_finished() {
            return self.wait();
        }
        None
    }

    /// Waits for the save in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> Option<Result<SaveRecord>> {
        let InFlight {
            step,
            stall_s,
            handle,
        } = self.in_flight.take()?;
        let outcome = match handle.join() {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::CheckpointWrite {
                step,
                source: Box::new(Error::Checkpoint {
                    dir: self.store.root().to_path_buf(),
                    reason: "the checkpoint writer thread panicked".into(),
                }),
            }),
        };
        Some(outcome.map(|(write_s, bytes)| SaveRecord {
            step,
            stall_s,
            write_s,
            bytes,
            background: true,
        }))
    }

    /// [`Self::wait`] for at most `limit` (a failing run must not hang on a writer waiting for
    /// a rank that died); `None` also when the writer is still busy then.
    pub fn wait_at_most(&mut self, limit: Duration) -> Option<Result<SaveRecord>> {
        let deadline = Instant::now() + limit;
        while !self.in_flight.as_ref()?.handle.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!(step = self.in_flight.as_ref().map(|f| f.step), "gave up waiting for the checkpoint being written; the previous checkpoint stays the newest");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait()
    }
}

/// The writer thread's work on one rank; returns (seconds to commit on the slowest rank, bytes
/// of all ranks). Errors are wrapped as [`Error::CheckpointWrite`] naming the step.
fn write_and_commit(
    store: &CheckpointStore,
    peers: Option<&Peers>,
    seq: u64,
    job: SaveJob,
) -> Result<(f64, u64)> {
    let step = job.step;
    let started = Instant::now();
    let wrap = |source: Error| Error::CheckpointWrite {
        step,
        source: Box::new(source),
    };
    let Some(peers) = peers.filter(|p| p.world > 1) else {
        let pending = store.begin(step)?;
        let (digests, bytes) = write_part(&pending.dir(), &job).map_err(wrap)?;
        pending.commit(job.metadata, Some(digests))?;
        return Ok((started.elapsed().as_secs_f64(), bytes));
    };
    let key = |what: &str| format!("corenet_checkpoint/{seq}/{what}");
    if peers.rank == 0 {
        let pending = store.begin(step);
        publish(peers, &key("open"), pending.as_ref().map(|_| json!({})))?;
        let pending = pending?;
        let own = write_part(&pending.dir(), &job).map(|(d, b)| (d, b, started.elapsed()));
        publish(
            peers,
            &key("part/0"),
            own.as_ref().map(|(d, b, t)| part_json(d, *b, *t)),
        )?;
        let mut parts = vec![own.map_err(|e| e.to_string())];
        for rank in 1..peers.world {
            parts.push(read_outcome(peers, &key(&format!("part/{rank}")))?.and_then(parse_part));
        }
        let outcome = merge_parts(parts).and_then(|(digests, bytes, slowest)| {
            pending
                .commit(job.metadata, Some(digests))
                .map(|_| (started.elapsed().max(slowest).as_secs_f64(), bytes))
                .map_err(|e| e.to_string())
        });
        let reply = outcome
            .as_ref()
            .map(|(t, b)| json!({"write_s": t, "bytes": b}));
        publish(peers, &key("commit"), reply.map_err(Clone::clone))?;
        return outcome.map_err(|m| wrap(commit_error(store, m)));
    }
    let opened = read_outcome(peers, &key("open"))?;
    opened.map_err(|m| {
        wrap(commit_error(
            store,
            format!("rank 0 could not open the save: {m}"),
        ))
    })?;
    let own = write_part(&store.tmp_dir_for(step), &job);
    let reply = own
        .as_ref()
        .map(|(d, b)| part_json(d, *b, started.elapsed()));
    publish(peers, &key(&format!("part/{}", peers.rank)), reply)?;
    own.map_err(wrap)?;
    let committed = read_outcome(peers, &key("commit"))?;
    let value = committed.map_err(|m| wrap(commit_error(store, m)))?;
    let write_s = value["write_s"].as_f64().unwrap_or_default();
    Ok((write_s, value["bytes"].as_u64().unwrap_or_default()))
}

/// Writes this rank's files into `dir` (fsynced and hashed one by one): their digests and bytes.
fn write_part(dir: &Path, job: &SaveJob) -> Result<(BTreeMap<String, FileDigest>, u64)> {
    let mut digests = BTreeMap::new();
    let mut bytes = 0u64;
    for (name, tensors) in &job.snapshot.tensor_files {
        let path = dir.join(name);
        if job.fault == Some(FaultKind::DiskFull) {
            return Err(injected_full_disk(&path));
        }
        corenet_model::write_safetensors(tensors, "pt", &path)?;
        let digest = sync_and_digest(&path)?;
        bytes += digest.size;
        digests.insert(name.clone(), digest);
    }
    for (name, content) in &job.snapshot.small_files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| Error::io("write", &path, e))?;
        let digest = sync_and_digest(&path)?;
        bytes += digest.size;
        digests.insert(name.clone(), digest);
    }
    if let Some(FaultKind::Slow(pause)) = job.fault {
        std::thread::sleep(pause);
    }
    Ok((digests, bytes))
}

/// What a write onto a full disk returns, for the test hook: half a file, then ENOSPC.
fn injected_full_disk(path: &Path) -> Error {
    if let Err(e) = std::fs::write(path, vec![0u8; 4096]) {
        return Error::io("write", path, e);
    }
    let full = std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "No space left on device (injected by the test hook)",
    );
    Error::io("write", path, full)
}

fn part_json(digests: &BTreeMap<String, FileDigest>, bytes: u64, took: Duration) -> Value {
    json!({"files": digests, "bytes": bytes, "write_s": took.as_secs_f64()})
}

type Part = (BTreeMap<String, FileDigest>, u64, Duration);

fn parse_part(value: Value) -> std::result::Result<Part, String> {
    let files = serde_json::from_value(value["files"].clone()).map_err(|e| e.to_string())?;
    let bytes = value["bytes"].as_u64().unwrap_or_default();
    let took = Duration::from_secs_f64(value["write_s"].as_f64().unwrap_or_default());
    Ok((files, bytes, took))
}

/// Every rank's part into one listing, or the first failure (naming its rank).
fn merge_parts(parts: Vec<std::result::Result<Part, String>>) -> std::result::Result<Part, String> {
    let mut all = (BTreeMap::new(), 0u64, Duration::ZERO);
    for (rank, part) in parts.into_iter().enumerate() {
        let (files, bytes, took) = part.map_err(|m| format!("rank {rank}: {m}"))?;
        for (name, digest) in files {
            if all.0.insert(name.clone(), digest).is_some() {
                return Err(format!("rank {rank} also wrote `{name}`"));
            }
        }
        all.1 += bytes;
        all.2 = all.2.max(took);
    }
    Ok(all)
}

fn commit_error(store: &CheckpointStore, reason: String) -> Error {
    Error::Checkpoint {
        dir: store.root().to_path_buf(),
        reason,
    }
}

/// Sets `key` to `{"ok": value}` or `{"error": message}`.
fn publish<E: ToString>(
    peers: &Peers,
    key: &str,
    outcome: std::result::Result<Value, E>,
) -> Result<()> {
    let value = match outcome {
        Ok(value) => json!({ "ok": value }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Ok(peers.store.set(key, value.to_string().as_bytes())?)
}

/// Waits for `key` and decodes what [`publish`] set.
fn read_outcome(peers: &Peers, key: &str) -> Result<std::result::Result<Value, String>> {
    let bytes = peers.store.get(key)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Dist {
        op: "checkpoint commit".into(),
        message: format!("`{key}` is not JSON: {e}"),
    })?;
    Ok(match value.get("error").and_then(Value::as_str) {
        Some(message) => Err(message.to_string()),
        None => Ok(value["ok"].clone()),
    })
}
