//! A parsed object URL: scheme, bucket (or container, or host) and key.
//!
//! Parsed by hand rather than by `url::Url`: a glob's `?` and `[` are not a query and a
//! character class to a URL parser.

use std::fmt;

use crate::error::{Error, Result};

/// The stores a source URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
    Https,
    Http,
}

impl Scheme {
    const TABLE: [(&'static str, Scheme); 7] = [
        ("s3://", Scheme::S3),
        ("s3a://", Scheme::S3),
        ("gs://", Scheme::Gcs),
        ("az://", Scheme::Azure),
        ("abfs://", Scheme::Azure),
        ("https://", Scheme::Https),
        ("http://", Scheme::Http),
    ];

    /// The scheme `s` starts with, if it is one of ours.
    pub fn of(s: &str) -> Option<Scheme> {
        Self::TABLE
            .iter()
            .find(|(prefix, _)| s.starts_with(prefix))
            .map(|(_, scheme)| *scheme)
    }

    fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3://",
            Scheme::Gcs => "gs://",
            Scheme::Azure => "az://",
            Scheme::Https => "https://",
            Scheme::Http => "http://",
        }
    }
}

/// `scheme://authority/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    pub scheme: Scheme,
    /// The bucket (S3, GCS), container (Azure) or `host[:port]` (HTTP).
    pub authority: String,
    /// The object's key, without a leading `/`; may hold glob characters.
    pub key: String,
}

impl ObjectUrl {
    /// Parses `s`; errors name it. Query strings are refused: a presigned or SAS URL carries
    /// its secret there, and a secret must not sit in a recipe or a log.
    pub fn parse(s: &str) -> Result<ObjectUrl> {
        let bad = |message: &str| Error::Remote {
            url: s.split('?').next().unwrap_or_default().to_string(),
            message: message.to_string(),
            failure: crate::error::RemoteFailure::Config,
        };
        let scheme =
            Scheme::of(s).ok_or_else(|| bad("not an s3://, gs://, az:// or https:// URL"))?;
        let rest = Self::after_prefix(s);
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad("no bucket, container or host"));
        }
        if matches!(scheme, Scheme::Https | Scheme::Http) && key.contains('?') {
            return Err(bad("query strings are not supported (a presigned URL would put its secret in the recipe); use the store's credentials instead"));
        }
        Ok(ObjectUrl {
            scheme,
            authority: authority.to_string(),
            key: key.to_string(),
        })
    }

    fn after_prefix(s: &str) -> &str {
        s.split_once("://").map_or(s, |(_, rest)| rest)
    }

    /// The same store, another key.
    pub fn with_key(&self, key: &str) -> ObjectUrl {
        ObjectUrl {
            key: key.to_string(),
            ..self.clone()
        }
    }

    /// The key up to its first glob character, cut back to the last `/`: what to list.
    /// `None` when the key holds no glob character.
    pub fn glob_prefix(&self) -> Option<&str> {
        let first = self.key.find(['*', '?', '['])?;
        let cut = self.key[..first].rfind('/').map_or(0, |i| i + 1);
        Some(&self.key[..cut])
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}/{}", self.scheme.prefix(), self.authority, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() -> Result<()> {
        let u = ObjectUrl::parse("s3://bucket/a/b/train-*.parquet")?;
        assert_eq!((u.scheme, u.authority.as_str()), (Scheme::S3, "bucket"));
        assert_eq!(u.key, "a/b/train-*.parquet");
        assert_eq!(u.glob_prefix(), Some("a/b/"));
        assert_eq!(u.to_string(), "s3://bucket/a/b/train-*.parquet");
        assert_eq!(ObjectUrl::parse("s3a://b/k")?.to_string(), "s3://b/k");
        assert_eq!(ObjectUrl::parse("gs://b/x?.jsonl")?.glob_prefix(), Some(""));
        assert_eq!(ObjectUrl::parse("az://c/k")?.scheme, Scheme::Azure);
        let h = ObjectUrl::parse("https://host:8443/d/f.jsonl")?;
        assert_eq!(
            (h.authority.as_str(), h.key.as_str()),
            ("host:8443", "d/f.jsonl")
        );
        assert_eq!(h.glob_prefix(), None);
        Ok(())
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "s3:///key",
            "ftp://x/y",
            "https://h/f.jsonl?X-Amz-Signature=hunter2",
        ] {
            let e = ObjectUrl::parse(bad).err().map(|e| e.to_string());
            assert!(e.is_some(), "{bad}");
            assert!(!e.unwrap_or_default().contains("hunter2"), "{bad}");
        }
    }
}
