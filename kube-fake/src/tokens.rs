//! ServiceAccount tokens as the API server issues and checks them: TokenRequest
//! (`POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, `authentication.k8s.io/v1`)
//! and TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`).
//!
//! Tokens are opaque random strings the store remembers (not JWTs): what a review answers is
//! what the real API server answers for a bound token — the service account's username and
//! groups, the bound Pod's or Node's names and UIDs in `status.user.extra` (Kubernetes ≥ 1.30
//! adds the node of a Pod-bound token), the audiences that matched — and a token stops being
//! valid when it expires or when its service account or bound object is deleted or replaced
//! (another UID).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::meta;
use crate::resource::Kind;

/// The audience of a token requested without `spec.audiences`, and the one a review without
/// `spec.audiences` checks against (the API server's `--api-audiences` default).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// `status.user.extra` keys of bound tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The bound Pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The Node of the bound Pod, or the bound Node.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// That Node's UID.
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
/// The token's id.
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Shortest lifetime the API server issues (`spec.expirationSeconds` below is refused).
const MIN_EXPIRATION: u64 = 600;
/// Lifetime without `spec.expirationSeconds`.
const DEFAULT_EXPIRATION: u64 = 3600;

/// An object a token is bound to.
#[derive(Clone, Debug)]
pub(crate) struct BoundObject {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) uid: String,
    /// For a Pod: its node (name, UID) when it had one at issue time.
    pub(crate) node: Option<(String, String)>,
}

/// What the store remembers of an issued token.
#[derive(Clone, Debug)]
pub(crate) struct IssuedToken {
    pub(crate) id: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) service_account_uid: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) expires: SystemTime,
    pub(crate) bound: Option<BoundObject>,
}

/// A TokenRequest's `spec`, checked.
pub(crate) struct TokenRequestSpec {
    pub(crate) audiences: Vec<String>,
    pub(crate) expiration: Duration,
    /// (kind, name, uid if given).
    pub(crate) bound: Option<(Kind, String, Option<String>)>,
}

fn invalid(name: &str, message: String) -> ApiError {
    ApiError::new(422, "Invalid", format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {message}"))
}

/// Parses a TokenRequest body for service account `name`; errors name the field.
pub(crate) fn parse_request(name: &str, body: &Value) -> Result<TokenRequestSpec, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => vec![DEFAULT_AUDIENCE.to_owned()],
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for (i, a) in list.iter().enumerate() {
                match a.as_str().filter(|a| !a.is_empty()) {
                    Some(a) => out.push(a.to_owned()),
                    None => {
                        return Err(invalid(
                            name,
                            format!("spec.audiences[{i}]: Invalid value: {a}: must be a non-empty string"),
                        ));
                    }
                }
            }
            if out.is_empty() { vec![DEFAULT_AUDIENCE.to_owned()] } else { out }
        }
        Some(other) => {
            return Err(invalid(name, format!("spec.audiences: Invalid value: {other}: must be a list of strings")));
        }
    };
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => match v.as_u64() {
            Some(s) if s >= MIN_EXPIRATION => s,
            _ => {
                return Err(invalid(
                    name,
                    format!(
                        "spec.expirationSeconds: Invalid value: {v}: may not specify a duration less than 10 minutes"
                    ),
                ));
            }
        },
    };
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let kind = match r.get("kind").and_then(Value::as_str) {
                Some("Pod") => Kind::Pod,
                Some("Node") => Kind::Node,
                Some("Secret") => Kind::Secret,
                other => {
                    return Err(invalid(
                        name,
                        format!(
                            "spec.boundObjectRef.kind: Unsupported value: {other:?}: supported values: \"Pod\", \"Node\", \"Secret\""
                        ),
                    ));
                }
            };
            let object = r
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid(name, "spec.boundObjectRef.name: Required value".to_owned()))?;
            let uid = r.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()).map(str::to_owned);
            Some((kind, object.to_owned(), uid))
        }
    };
    Ok(TokenRequestSpec { audiences, expiration: Duration::from_secs(expiration), bound })
}

/// A new opaque token and its id.
pub(crate) fn new_token() -> (String, String) {
    let id = meta::new_uid();
    let secret: String = (0..4).map(|_| format!("{:016x}", meta::random_u64())).collect();
    (format!("kf.{secret}"), id)
}

/// The TokenRequest the API server answers.
pub(crate) fn request_response(
    namespace: &str,
    name: &str,
    spec: &TokenRequestSpec,
    token: &str,
    expires: SystemTime,
) -> Value {
    let mut echoed = json!({
        "audiences": spec.audiences,
        "expirationSeconds": spec.expiration.as_secs(),
    });
    if let Some((kind, object, uid)) = &spec.bound {
        echoed["boundObjectRef"] =
            json!({"kind": kind.kind_name(), "apiVersion": kind.api_version(), "name": object, "uid": uid});
    }
    json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": meta::now_rfc3339()},
        "spec": echoed,
        "status": {"token": token, "expirationTimestamp": meta::format_rfc3339(expires)},
    })
}

/// Why a review did not authenticate.
pub(crate) fn unauthenticated(review: &Value, error: &str) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": {"authenticated": false, "error": error},
    })
}

/// The audiences a review asks for (`spec.audiences`, else the default).
pub(crate) fn review_audiences(review: &Value) -> Vec<String> {
    let asked: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    if asked.is_empty() { vec![DEFAULT_AUDIENCE.to_owned()] } else { asked }
}

/// A successful review of `token`, matching `audiences`.
pub(crate) fn authenticated(review: &Value, token: &IssuedToken, audiences: Vec<String>) -> Value {
    let extra = user_extra(token);
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": {
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", token.namespace, token.service_account),
                "uid": token.service_account_uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", token.namespace), "system:authenticated"],
                "extra": extra,
            },
            "audiences": audiences,
        },
    })
}

/// The `extra` of the user a token authenticates as: its credential id and the object it is
/// bound to (a Pod and its Node, or a Node), as the API server's token authenticator gives.
pub(crate) fn user_extra(token: &IssuedToken) -> serde_json::Map<String, Value> {
    let mut extra = serde_json::Map::new();
    extra.insert(EXTRA_CREDENTIAL_ID.into(), json!([format!("JTI={}", token.id)]));
    if let Some(bound) = &token.bound {
        match bound.kind {
            Kind::Pod => {
                extra.insert(EXTRA_POD_NAME.into(), json!([bound.name]));
                extra.insert(EXTRA_POD_UID.into(), json!([bound.uid]));
                if let Some((node, uid)) = &bound.node {
                    extra.insert(EXTRA_NODE_NAME.into(), json!([node]));
                    extra.insert(EXTRA_NODE_UID.into(), json!([uid]));
                }
            }
            Kind::Node => {
                extra.insert(EXTRA_NODE_NAME.into(), json!([bound.name]));
                extra.insert(EXTRA_NODE_UID.into(), json!([bound.uid]));
            }
            _ => {}
        }
    }
    extra
}
