//! The tracking URI: parsed into the base that requests go to, with its credentials kept
//! apart; shown without them ([`redact_uri`]); and the `Authorization` header, from MLflow's
//! environment variables or the URI's `user:password@`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use url::{Position, Url};

const EXAMPLE: &str = "e.g. http://127.0.0.1:5000";

/// A parsed tracking URI. `base` (scheme, host, port, path) is what requests go to and what
/// log lines show; credentials are kept apart.
pub(super) struct TrackingUri {
    pub(super) base: String,
    /// The URI's `user:password`, percent-decoded; never logged.
    pub(super) userinfo: Option<Vec<u8>>,
    pub(super) https: bool,
}

impl TrackingUri {
    /// Errors name the URI redacted.
    pub(super) fn parse(uri: &str) -> Result<TrackingUri, String> {
        let shown = redact_uri(uri);
        let url = Url::parse(uri.trim()).map_err(|e| {
            format!("`{shown}` is not a valid http:// or https:// URI: {e} ({EXAMPLE})")
        })?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "`{shown}`: scheme `{other}` is not http or https ({EXAMPLE})"
                ))
            }
        };
        // From the host to the end of the path: no credentials, query or fragment.
        let location = url[Position::BeforeHost..Position::AfterPath].trim_end_matches('/');
        Ok(TrackingUri {
            base: format!("{}://{location}", url.scheme()),
            userinfo: userinfo(&url),
            https,
        })
    }
}

/// `user` or `user:password`, decoded (the url crate keeps both percent-encoded).
fn userinfo(url: &Url) -> Option<Vec<u8>> {
    let mut info: Vec<u8> = percent_decode_str(url.username()).collect();
    if let Some(password) = url.password() {
        info.push(b':');
        info.extend(percent_decode_str(password));
    }
    (!info.is_empty()).then_some(info)
}

/// `uri` for a log line: without a `user:password@` part, a query string or a fragment.
pub fn redact_uri(uri: &str) -> String {
    // Plain text, not the url crate: this also shows URIs that do not parse, and a password
    // with an unencoded '/' or '?' makes a parser read part of it as host or path.
    let uri = uri.trim();
    let (scheme, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, uri),
    };
    // Everything up to the last '@' may be credentials; a path with an '@' loses a part,
    // which is harmless.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_owned(),
    }
}

/// The `Authorization` header: MLflow's environment variables first, then the URI's
/// `user:password@`.
pub(super) fn authorization(userinfo: Option<&[u8]>) -> Option<String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = env("MLFLOW_TRACKING_TOKEN") {
        return Some(format!("Bearer {token}"));
    }
    if let (Some(user), Some(password)) = (
        env("MLFLOW_TRACKING_USERNAME"),
        env("MLFLOW_TRACKING_PASSWORD"),
    ) {
        return Some(basic(format!("{user}:{password}").as_bytes()));
    }
    userinfo.map(basic)
}

/// HTTP Basic authorization for `user:password`.
fn basic(userinfo: &[u8]) -> String {
    format!("Basic {}", STANDARD.encode(userinfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_credentials_query_and_fragment() {
        assert_eq!(
            redact_uri("http://user:secret@host:5000/mlflow?token=abc#x"),
            "http://host:5000/mlflow"
        );
        assert_eq!(redact_uri("https://tok@host"), "https://host");
        assert_eq!(redact_uri("http://127.0.0.1:5000"), "http://127.0.0.1:5000");
        // A password that should have been percent-encoded still does not show.
        let shown = redact_uri("http://u:pa/ss?w@host:1/p");
        assert_eq!(shown, "http://host:1/p");
        assert!(!redact_uri("user:pw@host?q=1").contains("pw"));
    }

    #[test]
    fn tracking_uri_keeps_credentials_apart() {
        let uri =
            TrackingUri::parse("HTTP://alice:p%40ss@example.org:8080/prefix/?x=1").expect("parse");
        assert_eq!(uri.base, "http://example.org:8080/prefix");
        assert_eq!(uri.userinfo.as_deref(), Some(&b"alice:p@ss"[..]));
        assert!(!uri.https);
        let token = TrackingUri::parse("https://tok@host").expect("parse");
        assert_eq!(token.userinfo.as_deref(), Some(&b"tok"[..]));
        assert_eq!(token.base, "https://host");
        assert_eq!(
            TrackingUri::parse("http://127.0.0.1:5000").map(|u| (u.base, u.userinfo)),
            Ok(("http://127.0.0.1:5000".to_owned(), None))
        );
        assert_eq!(
            TrackingUri::parse("http://[::1]:5000").map(|u| u.base),
            Ok("http://[::1]:5000".to_owned())
        );
        for bad in [
            "127.0.0.1:5000",
            "ftp://host",
            "http://",
            "http://host:port",
            "http://a b",
        ] {
            assert!(TrackingUri::parse(bad).is_err(), "{bad}");
        }
        // The error shows the URI without its password.
        let error = TrackingUri::parse("http://u:secret@host:port").err();
        assert!(error.is_some_and(|e| !e.contains("secret")));
    }

    #[test]
    fn basic_authorization_is_base64_of_the_userinfo() {
        assert_eq!(basic(b"user:pass"), "Basic dXNlcjpwYXNz");
        let uri = TrackingUri::parse("http://user:pass@host").expect("parse");
        assert_eq!(
            uri.userinfo.as_deref().map(basic).as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
    }
}
