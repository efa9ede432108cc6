//! Skein's in-process Kubernetes API endpoint: a test harness, never part of an install.
//!
//! [`FakeApiServer`] serves, over plain HTTP/1.1 on a local TCP port, the calls kube-rs makes
//! for Nodes, Namespaces, Pods, Services, Events, EndpointSlices, NetworkPolicies, Leases,
//! Deployments, ServiceAccounts (with TokenRequest), Secrets, ConfigMaps, Roles, ClusterRoles
//! and their bindings, and TokenReviews for the tokens it issued — open to every request, or
//! authenticating tokens and enforcing RBAC ([`access::Access`]): list and watch (resourceVersion, bookmarks, 410 Expired on
//! compacted history), get, create, update, patch (merge, strategic subset, JSON patch, apply)
//! and delete, with label and field selectors. The master's and agent's tests and `skein-lab` point real kube-rs
//! clients at it, so every test drives the real client code path. For kubectl it also serves
//! OpenAPI v3, server-side field validation (`fieldValidation`) and server-side Tables. See
//! `docs/kube-fake.md`.
//!
//! ```no_run
//! # async fn demo() {
//! use skein_kube_fake::{FakeApiServer, Kind};
//! let server = FakeApiServer::start().await;
//! let client = server.client();
//! server.insert(Kind::Node, serde_json::json!({"metadata": {"name": "node-1"}})).unwrap();
//! # let _ = client;
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
mod defaults;
mod error;
mod fault;
mod meta;
mod openapi;
mod patch;
pub mod protobuf;
mod resource;
mod schema;
mod selector;
mod server;
mod store;
mod table;
mod tokens;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use defaults::selector_matches;
pub use error::ApiError;
pub use fault::Fault;
pub use resource::{Kind, Verb};
pub use schema::{FieldValidation, validate_fields};
pub use store::{Store, StoreOptions};
pub use table::table_cells;
pub use tokens::{
    DEFAULT_AUDIENCE, EXTRA_CREDENTIAL_ID, EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID,
};

/// How to start a [`FakeApiServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// How often a watch with `allowWatchBookmarks=true` receives a BOOKMARK. Default 1 s.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open. Default 30 min.
    pub default_watch_timeout: Duration,
    /// Serve this existing store (e.g. to "restart" the API server); a new one otherwise.
    pub store: Option<Store>,
    /// Options for a new store (ignored when `store` is given).
    pub store_options: StoreOptions,
    /// Authentication and authorization: open by default, or RBAC as on a cluster.
    pub access: access::Access,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            store: None,
            store_options: StoreOptions::default(),
            access: access::Access::Open,
        }
    }
}

/// A running fake Kubernetes API server. Dropping it stops the listener and closes every
/// connection and watch.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Store,
    end_watches: watch::Sender<u64>,
    accept_task: JoinHandle<()>,
    /// The administrator's token under [`access::Access::Rbac`]: what [`FakeApiServer::client`]
    /// and the kubeconfig present.
    admin_token: Option<String>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("addr", &self.addr).field("store", &self.store).finish()
    }
}

impl FakeApiServer {
    /// Starts a server with a fresh store on `127.0.0.1` and a free port.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, which leaves a test nothing to do. Use
    /// [`FakeApiServer::start_with`] to handle that as an error.
    pub async fn start() -> FakeApiServer {
        match FakeApiServer::start_with(ServerOptions::default()).await {
            Ok(server) => server,
            Err(error) => panic!("fake API server: cannot listen on 127.0.0.1: {error}"),
        }
    }

    /// Starts a server with the given options. Must be called inside a tokio runtime.
    pub async fn start_with(options: ServerOptions) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(options.addr).await?;
        let addr = listener.local_addr()?;
        let store = options.store.unwrap_or_else(|| Store::new(options.store_options));
        let (end_watches, end_watches_rx) = watch::channel(0u64);
        let admin_token = match &options.access {
            access::Access::Rbac { admin_token, .. } => Some(admin_token.clone()),
            access::Access::Open => None,
        };
        let context = Arc::new(server::ServerContext {
            store: store.clone(),
            addr,
            bookmark_interval: options.bookmark_interval.max(Duration::from_millis(10)),
            default_watch_timeout: options.default_watch_timeout,
            end_watches: end_watches_rx,
            access: options.access,
        });
        let accept_task = tokio::spawn(server::serve(listener, context));
        tracing::debug!(%addr, "fake Kubernetes API server listening");
        Ok(FakeApiServer { addr, store, end_watches, accept_task, admin_token })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) with one cluster, user and context, `skein-fake`, pointing at this
    /// server without TLS; the context's namespace is `default`. Its user has no credentials,
    /// or the administrator's token when the server runs with RBAC.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_for(self.admin_token.as_deref())
    }

    /// [`FakeApiServer::kubeconfig_yaml`] with `token` as the user's bearer token (none:
    /// anonymous).
    pub fn kubeconfig_yaml_for(&self, token: Option<&str>) -> String {
        let user = match token {
            Some(token) => format!("{{token: {}}}", serde_json::Value::String(token.to_owned())),
            None => "{}".to_owned(),
        };
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: skein-fake\n  \
               cluster:\n    \
                 server: {url}\n\
             users:\n\
             - name: skein-fake\n  \
               user: {user}\n\
             contexts:\n\
             - name: skein-fake\n  \
               context:\n    \
                 cluster: skein-fake\n    \
                 user: skein-fake\n    \
                 namespace: default\n\
             current-context: skein-fake\n\
             preferences: {{}}\n",
            url = self.url(),
        )
    }

    /// Writes [`FakeApiServer::kubeconfig_yaml`] to `path` (for components run as processes).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// A `kube::Config` pointing at this server: plain HTTP, namespace `default`, the
    /// administrator's token when the server runs with RBAC (no credentials otherwise).
    pub fn client_config(&self) -> kube::Config {
        let uri: hyper::Uri = match self.url().parse() {
            Ok(uri) => uri,
            // `http://` + a formatted SocketAddr is always a valid URI.
            Err(error) => unreachable!("invalid fake API server URL {}: {error}", self.url()),
        };
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        config.auth_info.token = self.admin_token.clone().map(secrecy::SecretString::from);
        config
    }

    /// A kube-rs client presenting `token` (none: anonymous). Must be called inside a
    /// tokio runtime.
    ///
    /// # Panics
    ///
    /// As [`FakeApiServer::client`].
    pub fn client_with_token(&self, token: Option<&str>) -> kube::Client {
        let mut config = self.client_config();
        config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_owned()));
        match kube::Client::try_from(config) {
            Ok(client) => client,
            Err(error) => panic!("cannot build a kube client for {}: {error}", self.url()),
        }
    }

    /// A kube-rs client for this server. Must be called inside a tokio runtime.
    ///
    /// # Panics
    ///
    /// If kube-rs cannot build a client for a plain-HTTP config, which would be a kube-rs bug.
    pub fn client(&self) -> kube::Client {
        match kube::Client::try_from(self.client_config()) {
            Ok(client) => client,
            Err(error) => panic!("cannot build a kube client for {}: {error}", self.url()),
        }
    }

    /// The store this server serves (shared handle).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// See [`Store::insert`].
    pub fn insert(&self, kind: Kind, object: Value) -> Result<Value, ApiError> {
        self.store.insert(kind, object)
    }

    /// Inserts every document of a multi-document YAML text (manifests as `kubectl apply`
    /// reads them), in order; empty documents are skipped. Returns the objects inserted as
    /// `kind/name`. A document that is not YAML, names a kind this server does not serve or
    /// is refused by the store stops the insertion there, with an error naming it.
    pub fn insert_yaml(&self, yaml: &str) -> Result<Vec<String>, ApiError> {
        let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .map_err(|e| ApiError::bad_request(format!("the manifest is not YAML: {e}")))?;
        let mut inserted = Vec::new();
        for (i, document) in documents.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
            let field = |f: &str| document.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
            let (api_version, kind_name) = (field("apiVersion"), field("kind"));
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
            let Some(kind) = Kind::ALL
                .into_iter()
                .find(|k| k.group() == group && k.version() == version && k.kind_name() == kind_name)
            else {
                return Err(ApiError::bad_request(format!(
                    "document {}: {api_version} {kind_name} is not a kind this server serves",
                    i + 1
                )));
            };
            let name = document.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            self.store.insert(kind, document)?;
            inserted.push(format!("{}/{name}", kind.singular()));
        }
        Ok(inserted)
    }

    /// See [`Store::get`].
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store.get(kind, namespace, name)
    }

    /// See [`Store::list`].
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.store.list(kind, namespace)
    }

    /// See [`Store::delete`].
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store.delete(kind, namespace, name)
    }

    /// See [`Store::compact_history_before`].
    pub fn compact_history_before(&self, rv: u64) {
        self.store.compact_history_before(rv)
    }

    /// See [`Store::compact_all_history`].
    pub fn compact_all_history(&self) {
        self.store.compact_all_history()
    }

    /// See [`Store::resource_version`].
    pub fn resource_version(&self) -> u64 {
        self.store.resource_version()
    }

    /// See [`Store::inject_fault`].
    pub fn inject_fault(&self, fault: Fault) {
        self.store.inject_fault(fault)
    }

    /// See [`Store::request_count`].
    pub fn request_count(&self, verb: Verb, kind: Kind) -> u64 {
        self.store.request_count(verb, kind)
    }

    /// See [`Store::request_counts`].
    pub fn request_counts(&self) -> BTreeMap<(Verb, Kind), u64> {
        self.store.request_counts()
    }

    /// Ends every open watch stream now, as an API server does when a watch times out; clients
    /// resume from the last resourceVersion they saw.
    pub fn end_watches(&self) {
        self.end_watches.send_modify(|generation| *generation += 1);
    }

    /// Stops listening and closes every connection and watch; the store stays usable (e.g.
    /// by a new server started with [`ServerOptions::store`]).
    pub async fn shutdown(mut self) -> Store {
        self.end_watches();
        self.accept_task.abort();
        // Wait until the aborted task (and with it every connection) is really gone; its
        // result is the cancellation just requested.
        let _ = (&mut self.accept_task).await;
        self.store.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.end_watches.send_modify(|generation| *generation += 1);
        self.accept_task.abort();
    }
}
