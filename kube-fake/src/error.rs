//! Errors as the Kubernetes API reports them: a `Status` object with an HTTP code and a
//! machine-readable `reason`, so kube-rs surfaces them as `kube::Error::Api`.

use serde_json::{Value, json};

use crate::resource::Kind;

/// A failed API request, answered as a Kubernetes `Status` (`kind: Status`, `status: Failure`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, 410, 422, ...).
    pub code: u16,
    /// The `reason` field: `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Invalid`, ...
    pub reason: String,
    /// Human-readable message naming the object, field or value at fault.
    pub message: String,
    /// `details.name`, when the error is about one object.
    pub name: Option<String>,
    /// `details.kind` (plural resource name) and `details.group`, when known.
    pub resource: Option<Kind>,
}

impl ApiError {
    /// An error with the given code, reason and message.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError { code, reason: reason.to_owned(), message: message.into(), name: None, resource: None }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object: `pods "web" not found`.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        ApiError {
            name: Some(name.to_owned()),
            resource: Some(kind),
            ..ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", resource_ref(kind)))
        }
    }

    /// 409 AlreadyExists: `pods "web" already exists`.
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        ApiError {
            name: Some(name.to_owned()),
            resource: Some(kind),
            ..ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource_ref(kind)))
        }
    }

    /// 409 Conflict, e.g. a stale `metadata.resourceVersion`.
    pub fn conflict(kind: Kind, name: &str, why: &str) -> Self {
        ApiError {
            name: Some(name.to_owned()),
            resource: Some(kind),
            ..ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": {why}", resource_ref(kind)),
            )
        }
    }

    /// 410 Expired: a resourceVersion or continue token older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 422 Invalid: the object or patch is well-formed JSON but not acceptable.
    pub fn invalid(kind: Kind, name: &str, message: impl Into<String>) -> Self {
        ApiError {
            name: Some(name.to_owned()),
            resource: Some(kind),
            ..ApiError::new(422, "Invalid", format!("{} \"{name}\" is invalid: {}", kind.kind_name(), message.into()))
        }
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// The error answered for a status code injected by a test (see [`crate::Fault`]).
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        ApiError::new(code, reason, format!("injected failure: {code} {reason}"))
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.name.is_some() || self.resource.is_some() {
            let mut details = serde_json::Map::new();
            if let Some(name) = &self.name {
                details.insert("name".into(), Value::String(name.clone()));
            }
            if let Some(kind) = self.resource {
                if !kind.group().is_empty() {
                    details.insert("group".into(), Value::String(kind.group().into()));
                }
                details.insert("kind".into(), Value::String(kind.plural().into()));
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// `pods` or `leases.coordination.k8s.io`, as the API server names resources in messages.
pub(crate) fn resource_ref(kind: Kind) -> String {
    if kind.group().is_empty() { kind.plural().to_owned() } else { format!("{}.{}", kind.plural(), kind.group()) }
}
