//! HTTP to one tracking server, and what its answers mean: JSON, a failure worth retrying, or
//! a rejection.

use std::time::Duration;

use serde_json::Value;

use super::batch::truncate_chars;
use super::tracking_uri::{authorization, TrackingUri};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one whole request (connect, send, answer).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no usable answer.
#[derive(Debug)]
pub(super) enum CallError {
    /// No connection, a timeout, HTTP 408/429 or 5xx: worth retrying.
    Transient(String),
    /// HTTP 4xx: the same request will be refused again.
    Rejected(Rejection),
}

#[derive(Debug, Clone)]
pub(super) struct Rejection {
    status: u16,
    /// MLflow's `error_code`, e.g. `RESOURCE_DOES_NOT_EXIST`, `INVALID_PARAMETER_VALUE`.
    pub(super) code: String,
    message: String,
}

impl Rejection {
    /// Credentials refused, or the run gone: nothing more will get through.
    pub(super) fn is_final(&self) -> bool {
        self.status == 401 || self.status == 403 || self.code == "RESOURCE_DOES_NOT_EXIST"
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)
    }
}

/// HTTP to one tracking server.
pub(super) struct Client {
    agent: ureq::Agent,
    /// Requests go to `{base}/api/2.0/mlflow/{endpoint}`; also what log lines show.
    pub(super) base: String,
    /// The `Authorization` header's value; never logged.
    auth: Option<String>,
}

impl Client {
    pub(super) fn new(uri: &TrackingUri) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("corenet-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            base: uri.base.clone(),
            auth: authorization(uri.userinfo.as_deref()),
        }
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/2.0/mlflow/{endpoint}", self.base)
    }

    pub(super) fn get(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let mut request = self.agent.get(self.url(endpoint));
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        answer(self.prepare(request, timeout).call())
    }

    pub(super) fn post(
        &self,
        endpoint: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let request = self
            .agent
            .post(self.url(endpoint))
            .content_type("application/json");
        answer(self.prepare(request, timeout).send(body.to_string()))
    }

    /// `request` with the credentials and a timeout of its own.
    fn prepare<B>(
        &self,
        mut request: ureq::RequestBuilder<B>,
        timeout: Duration,
    ) -> ureq::RequestBuilder<B> {
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        request.config().timeout_global(Some(timeout)).build()
    }
}

/// The JSON of a 2xx answer, or what went wrong.
fn answer(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, CallError> {
    let mut response = response.map_err(|e| CallError::Transient(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| CallError::Transient(format!("HTTP {status}, reading the answer: {e}")))?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if (200..300).contains(&status) {
        return Ok(json.unwrap_or(Value::Null));
    }
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = field("error_code").unwrap_or_default();
    let message = field("message").unwrap_or_else(|| truncate_chars(text.trim(), 300));
    if status == 408 || status == 429 || status >= 500 {
        Err(CallError::Transient(format!(
            "HTTP {status} {code}: {message}"
        )))
    } else {
        Err(CallError::Rejected(Rejection {
            status,
            code,
            message,
        }))
    }
}
