//! Shards on object storage. A source path or glob may be a URL (`s3://bucket/prefix/*.parquet`,
//! `gs://…`, `az://container/…`, `https://host/file.jsonl.zst`); everything downstream reads
//! it as it reads a local file, through [`RemoteObject`]'s ranged, retried, read-ahead blocks.
//!
//! A URL stays a `PathBuf` in the rest of the crate (the stream state, the shard list, the
//! logs): `Path::new("s3://b/k")` keeps its bytes, and [`is_url`] tells the two apart where
//! they must be opened differently.

mod listing;
mod object_folder;
mod object_url;
mod remote_object;
mod request_retry;
mod storage_config;
mod store;

use std::path::Path;

pub use self::listing::expand;
pub use self::object_folder::ObjectFolder;
pub use self::object_url::{ObjectUrl, Scheme};
pub use self::remote_object::{ObjectCursor, RemoteObject};
pub use self::request_retry::{remote_totals, RemoteTotals};
pub use self::storage_config::StorageConfig;

/// True when `path` names an object on a store rather than a local file.
pub fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| Scheme::of(s).is_some())
}
