//! Kubernetes `Status` errors: every failure the test API server reports is
//! one of these, with the reason, code and message wording of the real API
//! server (`k8s.io/apimachinery/pkg/api/errors`), so clients that branch on
//! `reason` or `code` (kubectl, kube-rs, client-go) behave as in a cluster.

use serde_json::{json, Value};

/// A failed API call: HTTP code, Kubernetes `reason` and message.
///
/// The same type is returned by the in-process store methods of
/// [`TestApiServer`](super::TestApiServer), so a test sees the error the API
/// would have answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code} {reason})")]
pub struct ApiError {
    /// HTTP status code (404, 409, ...).
    pub code: u16,
    /// Kubernetes `StatusReason` (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human readable message, worded like the real API server's.
    pub message: String,
    /// `details.name`, when the error is about one object.
    pub name: Option<String>,
    /// `details.causes`: `(reason, field, message)` triples for `Invalid`.
    pub causes: Vec<(String, String, String)>,
    /// Seconds for a `Retry-After` header and `details.retryAfterSeconds`.
    pub retry_after: Option<u64>,
    /// `details` exactly, when it is not about a Node (Forbidden names the
    /// resource asked for, ListOptions errors their own kind).
    pub details: Option<Box<Value>>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            causes: Vec::new(),
            retry_after: None,
            details: None,
        }
    }

    /// 401 as kube-apiserver answers a request without valid credentials.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 with kube-apiserver's wording and `details` (see `rbac.rs`).
    pub fn forbidden(message: String, details: Value) -> Self {
        let mut error = Self::new(403, "Forbidden", message);
        error.details = Some(Box::new(details));
        error
    }

    /// 422 for invalid list or watch options
    /// (`ListOptions.meta.k8s.io "" is invalid: ...`), one cause per field
    /// error.
    pub fn invalid_list_options(causes: Vec<(String, String, String)>) -> Self {
        let joined = joined_causes(&causes);
        let mut error = Self::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {joined}"),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|(reason, field, message)| json!({"reason": reason, "message": message, "field": field}))
            .collect();
        error.details = Some(Box::new(
            json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}),
        ));
        error
    }

    fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// 404 `nodes "x" not found`.
    pub fn not_found(name: &str) -> Self {
        Self::new(404, "NotFound", format!("nodes \"{name}\" not found")).named(name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 `nodes "x" already exists`.
    pub fn already_exists(name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("nodes \"{name}\" already exists"),
        )
        .named(name)
    }

    /// 409 optimistic-concurrency conflict (stale resourceVersion).
    pub fn conflict(name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .named(name)
    }

    /// 409 for a failed precondition (uid or resourceVersion in
    /// DeleteOptions, uid in an update).
    pub fn precondition(name: &str, detail: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on nodes \"{name}\": {detail}"),
        )
        .named(name)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 Invalid with one cause per field error:
    /// `Node "x" is invalid: spec.podCIDRs: Invalid value: ...`.
    pub fn invalid(name: &str, causes: Vec<(String, String, String)>) -> Self {
        let joined = joined_causes(&causes);
        let mut error = Self::new(
            422,
            "Invalid",
            format!("Node \"{name}\" is invalid: {joined}"),
        )
        .named(name);
        error.causes = causes;
        error
    }

    /// 422 without field causes (a JSON patch that does not apply).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 415 for an unknown patch or body content type.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 405 for a verb a path does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 406 when the client accepts nothing the server can produce.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (asked for: {accept})"),
        )
    }

    /// 410 Expired for a continue token or list resourceVersion that is no
    /// longer in the kept history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 for an oversized request body.
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The error an injected failure answers with (see
    /// [`TestApiServer::fail_requests`](super::TestApiServer::fail_requests)).
    pub fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
            500 => ("InternalError", "an error on the server (\"injected failure\") has prevented the request from succeeding"),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504 => ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden: injected failure"),
            410 => ("Expired", "injected failure: gone"),
            _ => ("", "injected failure"),
        };
        let mut error = Self::new(code, reason, message);
        if matches!(code, 429 | 503) {
            error.retry_after = Some(1);
        }
        error
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(name) = &self.name {
            details.insert("name".into(), json!(name));
            // NewInvalid names the kind, the other errors the resource.
            let kind = if self.reason == "Invalid" {
                "Node"
            } else {
                "nodes"
            };
            details.insert("kind".into(), json!(kind));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|(reason, field, message)| {
                    json!({"reason": reason, "message": message, "field": field})
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(seconds) = self.retry_after {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        });
        if let Some(map) = status.as_object_mut() {
            if !self.reason.is_empty() {
                map.insert("reason".into(), json!(self.reason));
            }
            if let Some(exact) = &self.details {
                map.insert("details".into(), exact.as_ref().clone());
            } else if !details.is_empty() {
                map.insert("details".into(), Value::Object(details));
            }
            map.insert("code".into(), json!(self.code));
        }
        status
    }
}

/// One field error for [`ApiError::invalid`], in the wording of
/// `k8s.io/apimachinery/pkg/util/validation/field`.
pub fn field_invalid(field: &str, value: &str, detail: &str) -> (String, String, String) {
    (
        "FieldValueInvalid".into(),
        field.into(),
        format!("Invalid value: \"{value}\": {detail}"),
    )
}

/// A `Required value` field error.
pub fn field_required(field: &str, detail: &str) -> (String, String, String) {
    (
        "FieldValueRequired".into(),
        field.into(),
        format!("Required value: {detail}"),
    )
}

/// A `Forbidden` field error.
pub fn field_forbidden(field: &str, detail: &str) -> (String, String, String) {
    (
        "FieldValueForbidden".into(),
        field.into(),
        format!("Forbidden: {detail}"),
    )
}

/// The causes as kube-apiserver joins them into a message: one alone, or
/// `[a, b]`.
fn joined_causes(causes: &[(String, String, String)]) -> String {
    let list: Vec<String> = causes
        .iter()
        .map(|(_, field, message)| format!("{field}: {message}"))
        .collect();
    if list.len() == 1 {
        list.join("")
    } else {
        format!("[{}]", list.join(", "))
    }
}
