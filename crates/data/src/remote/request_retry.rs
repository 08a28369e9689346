//! Retries with backoff for object-store requests, and the process-wide request counters the
//! trainer logs (`data_remote_*`).
//!
//! The store clients are built with their own retries off, so that every retry happens here
//! and is counted; a retry resumes a block at the byte its broken download reached.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, RemoteFailure};

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static RETRIES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Totals of this process's object-store requests since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteTotals {
    pub requests: u64,
    /// Requests repeated after a transient failure.
    pub retries: u64,
    /// Object bytes received.
    pub bytes: u64,
}

/// The counters now.
pub fn remote_totals() -> RemoteTotals {
    RemoteTotals {
        requests: REQUESTS.load(Ordering::Relaxed),
        retries: RETRIES.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_bytes(n: usize) {
    BYTES.fetch_add(n as u64, Ordering::Relaxed);
}

/// The first wait, doubled per failure up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Which failures are worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only transient ones (a listing, the HEAD that opens an object).
    Transient,
    /// Also "not found": the object was there when it was opened, so a 404 is a store coming
    /// back (a restarted server refilling, a replica catching up) until `deadline` says
    /// otherwise.
    AlsoNotFound,
}

/// Runs `attempt` until it succeeds, fails permanently, or has kept failing for `deadline`.
/// `attempt` gets the number of the try (0 first).
pub(crate) async fn with_retries<T, F, Fut>(
    url: &str,
    deadline: Duration,
    retry: Retry,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let start = Instant::now();
    let mut wait = FIRST_WAIT;
    for n in 0u32.. {
        count_request();
        let e = match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let failure = classify(&e);
        let again = failure == RemoteFailure::Unreachable
            || (retry == Retry::AlsoNotFound && failure == RemoteFailure::NotFound);
        if !again || start.elapsed() >= deadline {
            let tries = if again {
                format!(
                    " (gave up after {} tries in {:.0?})",
                    n + 1,
                    start.elapsed()
                )
            } else {
                String::new()
            };
            return Err(Error::Remote {
                url: url.to_string(),
                message: format!("{}{tries}", redact(&e.to_string())),
                failure,
            });
        }
        RETRIES.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(url, attempt = n + 1, error = %redact(&e.to_string()), wait_ms = wait.as_millis() as u64, "object-store request failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
    unreachable!("the retry loop only ends by returning")
}

/// What a failed request means for the shard.
pub(crate) fn classify(e: &object_store::Error) -> RemoteFailure {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => RemoteFailure::NotFound,
        E::Precondition { .. } | E::NotModified { .. } => RemoteFailure::Changed,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => RemoteFailure::Denied,
        E::Generic { .. } | E::JoinError { .. } => match client_status(&e.to_string()) {
            Some(408 | 429) | None => RemoteFailure::Unreachable,
            Some(404) => RemoteFailure::NotFound,
            Some(401 | 403) => RemoteFailure::Denied,
            Some(412) => RemoteFailure::Changed,
            Some(s) if s >= 500 => RemoteFailure::Unreachable,
            Some(_) => RemoteFailure::Config,
        },
        _ => RemoteFailure::Config,
    }
}

/// The HTTP status a client error reports in its message ("status code: 404 …"), if any.
/// The store crate keeps its error type private, so its text is what there is to read.
fn client_status(message: &str) -> Option<u16> {
    let (_, after) = message.split_once("status code: ")?;
    after.get(..3)?.parse().ok()
}

/// `message` with the query string of every URL in it removed: a SAS token or a presigned
/// signature travels there.
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let url = &tail[..end];
        out.push_str(url.split('?').next().unwrap_or(url));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_query_strings() {
        let m = "Error performing GET https://acct.blob.core.windows.net/c/k?sv=2024&sig=SECRET in 3ms: 403";
        let r = redact(m);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(
            r.contains("https://acct.blob.core.windows.net/c/k in 3ms: 403"),
            "{r}"
        );
    }

    #[test]
    fn reads_statuses_from_client_errors() {
        assert_eq!(
            client_status("Server returned non-2xx status code: 503 Service Unavailable: "),
            Some(503)
        );
        assert_eq!(client_status("connection refused"), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn retries_transient_failures_then_gives_up() {
        let before = remote_totals().retries;
        let flaky = |n: u32| async move {
            if n < 3 {
                Err(object_store::Error::Generic {
                    store: "test",
                    source: "connection refused".into(),
                })
            } else {
                Ok(n)
            }
        };
        let got = with_retries("s3://b/k", Duration::from_secs(60), Retry::Transient, flaky).await;
        assert_eq!(got.ok(), Some(3));
        assert!(remote_totals().retries >= before + 3);

        let denied = |_| async {
            Err::<(), _>(object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "403".into(),
            })
        };
        let e = with_retries(
            "s3://b/k",
            Duration::from_secs(60),
            Retry::AlsoNotFound,
            denied,
        )
        .await;
        assert!(matches!(
            e,
            Err(Error::Remote {
                failure: RemoteFailure::Denied,
                ..
            })
        ));

        let down = |_| async {
            Err::<(), _>(object_store::Error::Generic {
                store: "test",
                source: "connection refused".into(),
            })
        };
        let e = with_retries("s3://b/k", Duration::from_secs(2), Retry::Transient, down).await;
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("s3://b/k: ") && msg.contains("gave up after"),
            "{msg}"
        );
    }
}
