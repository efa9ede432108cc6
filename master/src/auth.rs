//! Who is on the other end of a southbound stream. An agent proves the node it runs on with
//! a projected ServiceAccount token (its own audience, short-lived, rotated by kubelet) sent
//! as `authorization: Bearer <token>` metadata; the master asks the API server about it with
//! a TokenReview and accepts it only if the token is valid for the southbound audience,
//! belongs to the agent's ServiceAccount, and is bound to a pod on a node (or to a node):
//! that node is the only one the stream may speak for.
//!
//! Reviews are cached for a short time (by a SHA-256 of the token, never the token itself),
//! so that reconnect storms do not turn into TokenReview storms; a deleted agent pod stops
//! authenticating new streams at most that long after.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use parking_lot::Mutex;
use tonic::metadata::MetadataMap;

/// The `status.user.extra` key naming the node of the token's bound pod (or bound node).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The audience agents' tokens are requested for, by default.
pub const DEFAULT_AUDIENCE: &str = "skein.dev/southbound";
/// Most reviews kept in the cache.
const CACHE_MAX: usize = 10_000;

/// Why a stream is not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error(
        "no bearer token: the agent must send its projected ServiceAccount token (audience {audience}) as `authorization: Bearer <token>`"
    )]
    Missing {
        /// The audience expected.
        audience: String,
    },
    /// The API server says the token is not valid.
    #[error("the token is not valid for audience {audience}: {reason}")]
    Invalid {
        /// The audience expected.
        audience: String,
        /// The API server's reason.
        reason: String,
    },
    /// A valid token, but not the agent's ServiceAccount.
    #[error("the token belongs to {username}, not to the agent ServiceAccount ({expected})")]
    NotTheAgent {
        /// Who it is.
        username: String,
        /// Who it should be.
        expected: String,
    },
    /// A valid agent token that is bound to no node.
    #[error(
        "the token of {username} is not bound to a node (no {NODE_NAME_EXTRA} in the review; request it with a Pod or Node boundObjectRef, Kubernetes ≥ 1.30)"
    )]
    NoNode {
        /// Who it is.
        username: String,
    },
    /// The review itself failed (the API server is unreachable, RBAC): try again.
    #[error("TokenReview failed: {0}")]
    Review(String),
}

impl AuthError {
    /// The gRPC status for this error: `UNAVAILABLE` when the agent should simply retry,
    /// `UNAUTHENTICATED` otherwise.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::Review(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// The bearer token in `metadata`, if any.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Tells which node a token speaks for.
#[tonic::async_trait]
pub trait NodeAuthenticator: Send + Sync + 'static {
    /// The node `token` is bound to, if it is a valid agent token.
    async fn node_of(&self, token: &str) -> Result<String, AuthError>;
}

/// What a TokenReview must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// The audience agents request their tokens for.
    pub audience: String,
    /// The agent ServiceAccount's namespace.
    pub agent_namespace: String,
    /// The agent ServiceAccount's name.
    pub agent_service_account: String,
    /// How long a successful review is reused.
    pub cache_ttl: Duration,
}

impl AuthSettings {
    /// Audience `skein.dev/southbound`, ServiceAccount `kube-system/skein-agent`, 10 s cache.
    pub fn new(agent_namespace: &str, agent_service_account: &str) -> AuthSettings {
        AuthSettings {
            audience: DEFAULT_AUDIENCE.to_owned(),
            agent_namespace: agent_namespace.to_owned(),
            agent_service_account: agent_service_account.to_owned(),
            cache_ttl: Duration::from_secs(10),
        }
    }

    /// The username the API server gives the agent's tokens.
    pub fn agent_username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.agent_namespace, self.agent_service_account)
    }
}

/// Authenticates with TokenReview (`authentication.k8s.io/v1`; the master's RBAC needs
/// `tokenreviews: create`).
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    settings: AuthSettings,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl TokenReviewAuthenticator {
    /// An authenticator asking the API server behind `client`.
    pub fn new(client: kube::Client, settings: AuthSettings) -> TokenReviewAuthenticator {
        TokenReviewAuthenticator { client, settings, cache: Mutex::new(HashMap::new()) }
    }

    /// Checks a review's answer (separate from the request, for the unit tests).
    pub fn node_from_review(settings: &AuthSettings, review: &TokenReview) -> Result<String, AuthError> {
        let status = review.status.clone().unwrap_or_default();
        let audience = settings.audience.clone();
        if status.authenticated != Some(true) {
            let reason = status.error.unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::Invalid { audience, reason });
        }
        // An API server that ignores audiences answers without them: refuse rather than
        // accept a token meant for something else.
        if !status.audiences.unwrap_or_default().contains(&audience) {
            return Err(AuthError::Invalid {
                audience: audience.clone(),
                reason: format!("not issued for {audience}"),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let expected = settings.agent_username();
        if username != expected {
            return Err(AuthError::NotTheAgent { username, expected });
        }
        let nodes = user.extra.unwrap_or_default().remove(NODE_NAME_EXTRA).unwrap_or_default();
        match nodes.as_slice() {
            [node] if !node.is_empty() => Ok(node.clone()),
            _ => Err(AuthError::NoNode { username }),
        }
    }
}

#[tonic::async_trait]
impl NodeAuthenticator for TokenReviewAuthenticator {
    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        let digest: [u8; 32] = {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if let Some((node, at)) = self.cache.lock().get(&digest)
            && at.elapsed() < self.settings.cache_ttl
        {
            return Ok(node.clone());
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| AuthError::Review(e.to_string()))?;
        let node = Self::node_from_review(&self.settings, &answer)?;
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (node.clone(), Instant::now()));
        Ok(node)
    }
}

/// A fixed token → node table, for benches and tools that run without an API server.
#[derive(Clone, Default)]
pub struct StaticTokens(HashMap<String, String>);

impl StaticTokens {
    /// Tokens from `(token, node)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> StaticTokens {
        StaticTokens(pairs.into_iter().collect())
    }
}

#[tonic::async_trait]
impl NodeAuthenticator for StaticTokens {
    async fn node_of(&self, token: &str) -> Result<String, AuthError> {
        self.0.get(token).cloned().ok_or_else(|| AuthError::Invalid {
            audience: DEFAULT_AUDIENCE.to_owned(),
            reason: "unknown token".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use tonic::metadata::MetadataValue;

    use super::*;

    fn review(authenticated: bool, audiences: &[&str], username: &str, nodes: &[&str]) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
                error: (!authenticated).then(|| "invalid bearer token".to_owned()),
                user: Some(UserInfo {
                    username: Some(username.to_owned()),
                    extra: Some(BTreeMap::from([(
                        NODE_NAME_EXTRA.to_owned(),
                        nodes.iter().map(|n| (*n).to_owned()).collect(),
                    )])),
                    ..UserInfo::default()
                }),
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn only_a_valid_agent_token_bound_to_one_node_names_a_node() {
        let s = AuthSettings::new("kube-system", "skein-agent");
        let agent = "system:serviceaccount:kube-system:skein-agent";
        let node = |r| TokenReviewAuthenticator::node_from_review(&s, &r);
        assert_eq!(node(review(true, &[DEFAULT_AUDIENCE], agent, &["node1"])), Ok("node1".to_owned()));
        assert!(matches!(node(review(false, &[DEFAULT_AUDIENCE], agent, &["node1"])), Err(AuthError::Invalid { .. })));
        assert!(matches!(node(review(true, &["api"], agent, &["node1"])), Err(AuthError::Invalid { .. })));
        let other = "system:serviceaccount:default:web";
        assert!(matches!(
            node(review(true, &[DEFAULT_AUDIENCE], other, &["node1"])),
            Err(AuthError::NotTheAgent { .. })
        ));
        assert!(matches!(node(review(true, &[DEFAULT_AUDIENCE], agent, &[])), Err(AuthError::NoNode { .. })));
        assert!(matches!(node(review(true, &[DEFAULT_AUDIENCE], agent, &["a", "b"])), Err(AuthError::NoNode { .. })));
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_metadata() {
        let mut m = MetadataMap::new();
        assert_eq!(bearer_token(&m), None);
        m.insert("authorization", MetadataValue::from_static("Bearer abc.def"));
        assert_eq!(bearer_token(&m), Some("abc.def"));
        m.insert("authorization", MetadataValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&m), None);
        m.insert("authorization", MetadataValue::from_static("Bearer  "));
        assert_eq!(bearer_token(&m), None);
    }
}
