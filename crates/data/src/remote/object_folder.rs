//! A "folder" on a store (a URL prefix) that files are copied to and from: what a checkpoint
//! mirror needs. Every request goes through the counted retries of `request_retry`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::object_url::ObjectUrl;
use super::remote_object::RemoteObject;
use super::request_retry::{with_retries, Retry};
use super::storage_config::StorageConfig;
use super::store::{runtime, store_for};
use crate::error::{Error, RemoteFailure, Result};

/// Files above this size go up in parts of this size.
const PART_BYTES: usize = 32 * 1024 * 1024;

pub struct ObjectFolder {
    url: ObjectUrl,
    store: std::sync::Arc<dyn ObjectStore>,
    storage: StorageConfig,
}

impl ObjectFolder {
    /// The folder at `url` (`s3://bucket/runs/tiny/`; a missing final `/` is added).
    pub fn open(url: &str, storage: &StorageConfig) -> Result<ObjectFolder> {
        let mut parsed = ObjectUrl::parse(url)?;
        if !parsed.key.is_empty() && !parsed.key.ends_with('/') {
            parsed.key.push('/');
        }
        let store = store_for(&parsed, storage)?;
        Ok(ObjectFolder {
            url: parsed,
            store,
            storage: storage.clone(),
        })
    }

    /// The URL of `name` inside the folder.
    pub fn url_of(&self, name: &str) -> String {
        self.url
            .with_key(&format!("{}{name}", self.url.key))
            .to_string()
    }

    fn location(&self, name: &str) -> StorePath {
        StorePath::from(format!("{}{name}", self.url.key).as_str())
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs_f64(self.storage.retry_seconds)
    }

    /// Uploads `local` as `name`: one PUT, or a multipart upload above [`PART_BYTES`]. A
    /// failed try starts the file over.
    pub fn put_file(&self, name: &str, local: &Path) -> Result<()> {
        let io = |e| Error::io(local, e);
        let size = std::fs::metadata(local).map_err(io)?.len();
        let location = self.location(name);
        let url = self.url_of(name);
        runtime().block_on(with_retries(
            &url,
            self.deadline(),
            Retry::Transient,
            |_| {
                let (store, location) = (&self.store, &location);
                async move {
                    let read = |e: std::io::Error| object_store::Error::Generic {
                        store: "corenet",
                        source: format!("{}: {e}", local.display()).into(),
                    };
                    let mut file = std::fs::File::open(local).map_err(read)?;
                    if size as usize <= PART_BYTES {
                        let mut bytes = Vec::with_capacity(size as usize);
                        file.read_to_end(&mut bytes).map_err(read)?;
                        store.put(location, PutPayload::from(bytes)).await?;
                        return Ok(());
                    }
                    let upload = store.put_multipart(location).await?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    let mut buf = vec![0u8; PART_BYTES];
                    loop {
                        let n = file.read(&mut buf).map_err(read)?;
                        if n == 0 {
                            break;
                        }
                        writer.wait_for_capacity(4).await?;
                        writer.write(&buf[..n]);
                    }
                    writer.finish().await?;
                    Ok(())
                }
            },
        ))
    }

    /// The object `name`, opened for reading.
    pub fn object(&self, name: &str) -> Result<RemoteObject> {
        RemoteObject::open(&self.url_of(name), &self.storage)
    }

    /// Copies `name` to `local` (created or replaced).
    pub fn get_file(&self, name: &str, local: &Path) -> Result<u64> {
        let mut reader = self.object(name)?.cursor(0);
        let mut file = std::fs::File::create(local).map_err(|e| Error::io(local, e))?;
        std::io::copy(&mut reader, &mut file).map_err(|e| Error::io(local, e))
    }

    /// Every object under the folder: (name relative to it, size), sorted.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let prefix = (!self.url.key.is_empty()).then(|| StorePath::from(self.url.key.as_str()));
        let url = self.url.to_string();
        let listed = runtime().block_on(with_retries(
            &url,
            self.deadline(),
            Retry::Transient,
            |_| self.store.list(prefix.as_ref()).try_collect::<Vec<_>>(),
        ))?;
        let mut names: Vec<(String, u64)> = listed
            .into_iter()
            .filter_map(|m| {
                let key = m.location.to_string();
                key.strip_prefix(&self.url.key)
                    .map(|n| (n.to_string(), m.size))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes `name`; one already gone is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let location = self.location(name);
        let url = self.url_of(name);
        let done = runtime().block_on(with_retries(
            &url,
            self.deadline(),
            Retry::Transient,
            |_| self.store.delete(&location),
        ));
        match done {
            Err(Error::Remote {
                failure: RemoteFailure::NotFound,
                ..
            }) => Ok(()),
            other => other,
        }
    }
}
