//! A shard's bytes, on local disk or on an object store, behind one interface: sequential
//! readers from an offset for the line formats, ranges for parquet (its footer, then only the
//! row groups this reader owns).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{Error, Result};
use crate::remote::{is_url, RemoteObject, StorageConfig};

pub enum ShardBytes {
    Local(File),
    Remote(RemoteObject),
}

impl ShardBytes {
    pub fn open(path: &Path, storage: &StorageConfig) -> Result<ShardBytes> {
        if is_url(path) {
            return Ok(ShardBytes::Remote(RemoteObject::open(
                &path.to_string_lossy(),
                storage,
            )?));
        }
        Ok(ShardBytes::Local(
            File::open(path).map_err(|e| Error::io(path, e))?,
        ))
    }

    pub fn size(&self, path: &Path) -> Result<u64> {
        match self {
            ShardBytes::Local(f) => Ok(f.metadata().map_err(|e| Error::io(path, e))?.len()),
            ShardBytes::Remote(o) => Ok(o.size()),
        }
    }

    /// A reader from byte `offset` (a file handle of its own, or a cursor on the shared
    /// blocks).
    pub fn reader_at(&self, path: &Path, offset: u64) -> Result<Box<dyn Read + Send>> {
        match self {
            ShardBytes::Local(f) => {
                let mut f = f.try_clone().map_err(|e| Error::io(path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(path, e))?;
                Ok(Box::new(f))
            }
            ShardBytes::Remote(o) => Ok(Box::new(o.cursor(offset))),
        }
    }

    pub fn try_clone(&self, path: &Path) -> Result<ShardBytes> {
        match self {
            ShardBytes::Local(f) => Ok(ShardBytes::Local(
                f.try_clone().map_err(|e| Error::io(path, e))?,
            )),
            ShardBytes::Remote(o) => Ok(ShardBytes::Remote(o.clone())),
        }
    }
}

impl Length for ShardBytes {
    fn len(&self) -> u64 {
        match self {
            ShardBytes::Local(f) => Length::len(f),
            ShardBytes::Remote(o) => o.size(),
        }
    }
}

impl ChunkReader for ShardBytes {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            ShardBytes::Local(f) => Ok(Box::new(BufReader::new(f.get_read(start)?))),
            ShardBytes::Remote(o) => Ok(Box::new(o.cursor(start))),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            ShardBytes::Local(f) => f.get_bytes(start, length),
            ShardBytes::Remote(o) => o
                .bytes_at(start, length)
                .map_err(|e| ParquetError::External(Box::new(e))),
        }
    }
}
