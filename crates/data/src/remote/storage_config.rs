//! `data.storage`: how the object-store sources are reached. Credentials are never here: they
//! come from each cloud's environment variables and config files (docs/data.md).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// An S3-compatible endpoint (MinIO, Ceph, R2, a local server) instead of AWS's; else
    /// `AWS_ENDPOINT_URL` or the profile's `endpoint_url`. `http://` endpoints are allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The S3 region; else `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile's, or `us-east-1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Unsigned requests, for public buckets (no credentials looked for).
    pub anonymous: bool,
    /// Let S3 fall back to the instance-metadata service (an EC2 role) when no other
    /// credentials are found. Off, a machine without credentials fails at once instead of
    /// waiting on a metadata endpoint that is not there.
    pub instance_metadata: bool,
    /// Bytes per ranged request.
    pub block_bytes: usize,
    /// Blocks each open object fetches ahead of the reader, so steps do not wait on the network.
    pub read_ahead: usize,
    /// How long one block may keep failing (with backoff between tries) before its shard is
    /// given up as unreachable.
    pub retry_seconds: f64,
    /// Per-request timeout.
    pub timeout_seconds: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            endpoint: None,
            region: None,
            anonymous: false,
            instance_metadata: false,
            block_bytes: 8 * 1024 * 1024,
            read_ahead: 2,
            retry_seconds: 120.0,
            timeout_seconds: 60.0,
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("storage: {m}")));
        if self.block_bytes < 4096 {
            return bad("block_bytes must be at least 4096");
        }
        if !(self.retry_seconds >= 0.0 && self.timeout_seconds > 0.0) {
            return bad("retry_seconds must be >= 0 and timeout_seconds > 0");
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.contains('?') {
                return bad("endpoint must be an http:// or https:// URL without a query");
            }
        }
        Ok(())
    }
}
