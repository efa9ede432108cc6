//! Writing a node annotation: the [`NodeAnnotator`] trait the readiness reporter talks
//! to, and its Kubernetes implementation (a JSON merge patch of the Node object).
//!
//! Behind a trait so that readiness logic is tested without an API server.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// Field manager recorded by the API server for Skein's agent.
pub const FIELD_MANAGER: &str = "skein-agent";

/// Future returned by [`NodeAnnotator::annotate`].
pub type AnnotateFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AnnotateError>> + Send + 'a>>;

/// An annotation could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot set annotation {key} on node {node}: {reason}")]
pub struct AnnotateError {
    /// The node.
    pub node: String,
    /// The annotation key.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Sets annotations on this agent's Node.
pub trait NodeAnnotator: Send + Sync {
    /// Sets `key` to `value`, leaving the node's other annotations alone.
    fn annotate<'a>(&'a self, key: &'a str, value: &'a str) -> AnnotateFuture<'a>;
}

/// [`NodeAnnotator`] over the Kubernetes API.
#[derive(Clone)]
pub struct KubeNodeAnnotator {
    nodes: Api<Node>,
    node: String,
}

impl KubeNodeAnnotator {
    /// Annotates node `node` through `client`.
    pub fn new(client: kube::Client, node: impl Into<String>) -> KubeNodeAnnotator {
        KubeNodeAnnotator { nodes: Api::all(client), node: node.into() }
    }

    /// The merge patch that sets one annotation.
    pub fn patch_body(key: &str, value: &str) -> serde_json::Value {
        serde_json::json!({ "metadata": { "annotations": { key: value } } })
    }
}

impl NodeAnnotator for KubeNodeAnnotator {
    fn annotate<'a>(&'a self, key: &'a str, value: &'a str) -> AnnotateFuture<'a> {
        Box::pin(async move {
            // A merge patch touches only this key, so it cannot clobber annotations
            // other controllers write concurrently, and needs no resourceVersion.
            let patch = KubeNodeAnnotator::patch_body(key, value);
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
            self.nodes.patch(&self.node, &params, &Patch::Merge(&patch)).await.map(|_| ()).map_err(|e| AnnotateError {
                node: self.node.clone(),
                key: key.to_owned(),
                reason: e.to_string(),
            })
        })
    }
}
