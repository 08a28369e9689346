//! One object opened for reading: its size and ETag from a HEAD, then its bytes in blocks of
//! `block_bytes`, each a ranged GET pinned to that ETag (a changed object fails instead of
//! mixing two versions), retried and resumed at the byte reached, with `read_ahead` blocks
//! fetched in the background while the reader works through the current one.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{Attribute, GetOptions, GetRange, ObjectStore};
use tokio::task::JoinHandle;

use super::object_url::ObjectUrl;
use super::request_retry::{count_bytes, with_retries, Retry};
use super::storage_config::StorageConfig;
use super::store::{runtime, store_for};
use crate::error::{Error, RemoteFailure, Result};

/// An open object; clones share its blocks.
#[derive(Clone)]
pub struct RemoteObject {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    size: u64,
    block: u64,
    read_ahead: u64,
    blocks: Mutex<Blocks>,
}

/// What a fetch needs, cheap to hand to a background task.
#[derive(Clone)]
struct Source {
    url: String,
    store: Arc<dyn ObjectStore>,
    location: StorePath,
    etag: Option<String>,
    version: Option<String>,
    deadline: Duration,
}

type Fetch = JoinHandle<Result<Bytes>>;

#[derive(Default)]
struct Blocks {
    /// Fetched blocks, oldest first.
    ready: VecDeque<(u64, Bytes)>,
    pending: HashMap<u64, Fetch>,
}

impl RemoteObject {
    /// HEADs `url`; errors name it. An object [`warm_up`](Self::warm_up) opened ahead is
    /// taken instead when it opened without error.
    pub fn open(url: &str, cfg: &StorageConfig) -> Result<RemoteObject> {
        if let Some(Ok(object)) = take_warm(url, cfg) {
            return Ok(object);
        }
        Self::open_now(url, cfg)
    }

    /// Opens `url` and fetches its first blocks on a thread of its own, for the next
    /// [`open`](Self::open) of it: what a reader calls for the shard after the one it reads, so
    /// that the shard boundary does not wait on a HEAD and a first GET.
    pub fn warm_up(url: &str, cfg: &StorageConfig) {
        let Ok(mut warm) = warm_objects().lock() else {
            return;
        };
        let key = warm_key(url, cfg);
        if warm.contains_key(&key) {
            return;
        }
        // Entries nobody took (a plan that changed) are dropped rather than kept for good.
        if warm.len() >= MAX_WARM {
            warm.clear();
        }
        let (url, cfg) = (url.to_string(), cfg.clone());
        let task = std::thread::spawn(move || {
            let object = RemoteObject::open_now(&url, &cfg)?;
            object.block(0)?;
            Ok(object)
        });
        warm.insert(key, task);
    }

    fn open_now(url: &str, cfg: &StorageConfig) -> Result<RemoteObject> {
        let parsed = ObjectUrl::parse(url)?;
        let store = store_for(&parsed, cfg)?;
        let location = StorePath::from(parsed.key.as_str());
        let deadline = Duration::from_secs_f64(cfg.retry_seconds);
        let head = runtime().block_on(with_retries(url, deadline, Retry::Transient, |_| {
            let options = GetOptions {
                head: true,
                ..Default::default()
            };
            store.get_opts(&location, options)
        }))?;
        if let Some(kind) = head.attributes.get(&Attribute::ContentType) {
            if kind.as_ref().starts_with("text/html") {
                return Err(Error::Remote {
                    url: url.to_string(),
                    message: format!("the server answers with an HTML page ({}), not a shard: a login, error or index page?", kind.as_ref()),
                    failure: RemoteFailure::Config,
                });
            }
        }
        let meta = head.meta;
        Ok(RemoteObject {
            inner: Arc::new(Inner {
                source: Source {
                    url: url.to_string(),
                    store,
                    location,
                    etag: meta.e_tag,
                    version: meta.version,
                    deadline,
                },
                size: meta.size,
                block: cfg.block_bytes as u64,
                read_ahead: cfg.read_ahead as u64,
                blocks: Mutex::new(Blocks::default()),
            }),
        })
    }

    pub fn url(&self) -> &str {
        &self.inner.source.url
    }

    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The object's identity on the store: its ETag, and its version where the bucket keeps
    /// versions. `None` when the store reports neither (some HTTP servers).
    pub fn identity(&self) -> Option<String> {
        let s = &self.inner.source;
        match (&s.etag, &s.version) {
            (Some(e), Some(v)) => Some(format!("etag:{e};version:{v}")),
            (Some(e), None) => Some(format!("etag:{e}")),
            (None, Some(v)) => Some(format!("version:{v}")),
            (None, None) => None,
        }
    }

    /// A reader from byte `offset`.
    pub fn cursor(&self, offset: u64) -> ObjectCursor {
        ObjectCursor {
            object: self.clone(),
            pos: offset,
        }
    }

    /// Copies bytes from `offset` into `buf`; 0 at the end of the object.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.inner.size || buf.is_empty() {
            return Ok(0);
        }
        let index = offset / self.inner.block;
        let block = self.block(index)?;
        let within = (offset - index * self.inner.block) as usize;
        let n = buf.len().min(block.len().saturating_sub(within));
        buf[..n].copy_from_slice(&block[within..within + n]);
        Ok(n)
    }

    /// `len` bytes from `offset` (fewer at the end of the object).
    pub fn bytes_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        let end = (offset + len as u64).min(self.inner.size);
        if end <= offset {
            return Ok(Bytes::new());
        }
        let first = offset / self.inner.block;
        if end > (first + 1) * self.inner.block {
            // Across blocks: copied out of each in turn.
            let mut out = vec![0u8; (end - offset) as usize];
            let mut filled = 0;
            while filled < out.len() {
                let n = self.read_at(offset + filled as u64, &mut out[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            out.truncate(filled);
            return Ok(Bytes::from(out));
        }
        let within = (offset - first * self.inner.block) as usize;
        Ok(self
            .block(first)?
            .slice(within..within + (end - offset) as usize))
    }

    fn blocks(&self) -> Result<std::sync::MutexGuard<'_, Blocks>> {
        self.inner.blocks.lock().map_err(|_| Error::Remote {
            url: self.url().to_string(),
            message: "a reader of this object panicked".into(),
            failure: RemoteFailure::Config,
        })
    }

    /// Block `index`, from the cache, a fetch already running, or a new one; then starts the
    /// fetches of the blocks after it.
    fn block(&self, index: u64) -> Result<Bytes> {
        let (cached, pending) = {
            let mut b = self.blocks()?;
            let cached = b
                .ready
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, d)| d.clone());
            let pending = cached.is_none().then(|| b.pending.remove(&index)).flatten();
            (cached, pending)
        };
        let data = match (cached, pending) {
            (Some(data), _) => data,
            (None, Some(fetch)) => self.wait(fetch)?,
            (None, None) => {
                runtime().block_on(fetch(self.inner.source.clone(), self.range(index)))?
            }
        };
        let mut b = self.blocks()?;
        if !b.ready.iter().any(|(i, _)| *i == index) {
            b.ready.push_back((index, data.clone()));
        }
        let keep = (self.inner.read_ahead + 2) as usize;
        while b.ready.len() > keep {
            b.ready.pop_front();
        }
        // Fetches outside the window (behind the reader, or ahead of a reader that jumped
        // back, as parquet does from its footer) would only hold memory.
        let ahead = self.inner.read_ahead;
        b.pending.retain(|&i, task| {
            let keep = i > index && i <= index + ahead;
            if !keep {
                task.abort();
            }
            keep
        });
        let blocks = self.inner.size.div_ceil(self.inner.block);
        for next in index + 1..=(index + self.inner.read_ahead).min(blocks.saturating_sub(1)) {
            let known = b.pending.contains_key(&next) || b.ready.iter().any(|(i, _)| *i == next);
            if !known {
                let task = runtime().spawn(fetch(self.inner.source.clone(), self.range(next)));
                b.pending.insert(next, task);
            }
        }
        Ok(data)
    }

    fn wait(&self, fetch: Fetch) -> Result<Bytes> {
        runtime().block_on(fetch).map_err(|e| Error::Remote {
            url: self.url().to_string(),
            message: format!("a background fetch stopped: {e}"),
            failure: RemoteFailure::Unreachable,
        })?
    }

    fn range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * self.inner.block;
        start..(start + self.inner.block).min(self.inner.size)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(b) = self.blocks.get_mut() {
            for (_, task) in b.pending.drain() {
                task.abort();
            }
        }
    }
}

/// Objects opened ahead of their readers, at most this many at a time.
const MAX_WARM: usize = 16;

type WarmObjects = Mutex<HashMap<(String, String), std::thread::JoinHandle<Result<RemoteObject>>>>;

fn warm_objects() -> &'static WarmObjects {
    static WARM: std::sync::OnceLock<WarmObjects> = std::sync::OnceLock::new();
    WARM.get_or_init(Default::default)
}

fn warm_key(url: &str, cfg: &StorageConfig) -> (String, String) {
    (
        url.to_string(),
        serde_json::to_string(cfg).unwrap_or_default(),
    )
}

/// The warmed-up object of `url`, if one was started (waiting for it to finish opening).
fn take_warm(url: &str, cfg: &StorageConfig) -> Option<Result<RemoteObject>> {
    let task = warm_objects().lock().ok()?.remove(&warm_key(url, cfg))?;
    task.join().ok()
}

/// Fetches `range`; a download that breaks is resumed at the byte it reached.
async fn fetch(source: Source, range: std::ops::Range<u64>) -> Result<Bytes> {
    let want = (range.end - range.start) as usize;
    let got = Mutex::new(BytesMut::with_capacity(want));
    with_retries(&source.url, source.deadline, Retry::AlsoNotFound, |_| {
        let (source, got) = (&source, &got);
        async move {
            let have = got.lock().map(|g| g.len()).unwrap_or(0) as u64;
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.start + have..range.end)),
                if_match: source.etag.clone(),
                version: source.version.clone(),
                ..Default::default()
            };
            let mut body = source
                .store
                .get_opts(&source.location, options)
                .await?
                .into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                count_bytes(chunk.len());
                if let Ok(mut g) = got.lock() {
                    g.extend_from_slice(&chunk);
                }
            }
            let have = got.lock().map(|g| g.len()).unwrap_or(0);
            if have < want {
                return Err(object_store::Error::Generic {
                    store: "corenet",
                    source: format!("the body ended after {have} of {want} bytes").into(),
                });
            }
            Ok(())
        }
    })
    .await?;
    let mut data = got.into_inner().unwrap_or_default();
    data.truncate(want);
    Ok(data.freeze())
}

/// A `Read + Seek` view of an object (one position; clones of the object share its blocks).
pub struct ObjectCursor {
    object: RemoteObject,
    pos: u64,
}

impl Read for ObjectCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .object
            .read_at(self.pos, buf)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectCursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.object.size() as i128;
        let target = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}
