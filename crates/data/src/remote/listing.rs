//! A source pattern on a store, expanded to its objects: an exact key, a `prefix/` (every
//! object under it), or a glob over keys (`*` and `?` stay within one `/` segment, `**`
//! crosses them), listed from the longest literal prefix.

use futures::TryStreamExt;
use object_store::path::Path as StorePath;

use super::object_url::ObjectUrl;
use super::remote_object::RemoteObject;
use super::request_retry::{redact, with_retries, Retry};
use super::storage_config::StorageConfig;
use super::store::{runtime, store_for};
use crate::error::{Error, RemoteFailure, Result};

/// The URLs `pattern` names, sorted; errors name the pattern (never a credential).
pub fn expand(pattern: &str, cfg: &StorageConfig) -> Result<Vec<String>> {
    let url = ObjectUrl::parse(pattern)?;
    let (prefix, matcher) = match url.glob_prefix() {
        Some(prefix) => {
            let glob = glob::Pattern::new(&url.key).map_err(|e| Error::Remote {
                url: pattern.to_string(),
                message: format!("bad glob: {e}"),
                failure: RemoteFailure::Config,
            })?;
            (prefix.to_string(), Some(glob))
        }
        None if url.key.ends_with('/') || url.key.is_empty() => (url.key.clone(), None),
        None => {
            // Opened now, so that a missing object or an HTML answer stops the run before
            // its first step.
            RemoteObject::open(pattern, cfg)?;
            return Ok(vec![url.to_string()]);
        }
    };
    let store = store_for(&url, cfg)?;
    let deadline = std::time::Duration::from_secs_f64(cfg.retry_seconds);
    let listed = runtime().block_on(with_retries(pattern, deadline, Retry::Transient, |_| {
        let prefix = (!prefix.is_empty()).then(|| StorePath::from(prefix.as_str()));
        store.list(prefix.as_ref()).try_collect::<Vec<_>>()
    }));
    let listed = listed.map_err(|e| match e {
        Error::Remote {
            url,
            message,
            failure,
        } => Error::Remote {
            url,
            message: format!("cannot list: {}", redact(&message)),
            failure,
        },
        other => other,
    })?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut urls: Vec<String> = listed
        .into_iter()
        .map(|meta| meta.location.to_string())
        .filter(|key| key.starts_with(&prefix))
        .filter(|key| {
            matcher
                .as_ref()
                .is_none_or(|m| m.matches_with(key, options))
        })
        .map(|key| url.with_key(&key).to_string())
        .collect();
    urls.sort();
    Ok(urls)
}
