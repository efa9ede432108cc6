//! The HTTP side: accepts connections, routes Kubernetes API paths to the store, streams
//! watches as newline-delimited JSON, and answers every failure with a `Status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::access::{self, Access, Attributes, UserInfo};
use crate::error::ApiError;
use crate::fault::RequestInfo;
use crate::openapi;
use crate::resource::{Kind, Verb};
use crate::schema::{self, FieldValidation, ParsedBody, Schema};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Change, ChangeType, ListRequest, PatchType, Store, WriteMode};
use crate::table::{self, IncludeObject, TableOptions, TableVersion};

/// Largest request body accepted (larger ones get 413).
const MAX_BODY_BYTES: usize = 16 << 20;

/// A response body: either complete, or a stream of watch events.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(receiver) => receiver.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(bytes)) => hyper::body::SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// What every request handler shares.
pub(crate) struct ServerContext {
    pub(crate) store: Store,
    pub(crate) addr: SocketAddr,
    pub(crate) bookmark_interval: Duration,
    pub(crate) default_watch_timeout: Duration,
    /// Bumped to end every open watch (and on shutdown).
    pub(crate) end_watches: watch::Receiver<u64>,
    /// Who may do what.
    pub(crate) access: Access,
}

/// Accepts connections until the task is aborted; aborting drops the `JoinSet`, which ends
/// every open connection too.
pub(crate) async fn serve(listener: TcpListener, context: Arc<ServerContext>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "fake API server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let context = context.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let context = context.clone();
                async move { Ok::<_, Infallible>(handle(request, &context).await) }
            });
            if let Err(error) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%error, "fake API server: connection ended with an error");
            }
        });
    }
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status())
}

fn text_response(text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::Full(Some(Bytes::from_static(text.as_bytes()))));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match input.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query parameters.
#[derive(Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(pair), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }

    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// What a URL names.
enum Route {
    Version,
    Health,
    OpenApiRoot,
    OpenApi(String),
    CoreVersions,
    Groups,
    Group(&'static str),
    Resources(&'static str, &'static str),
    Object(Target),
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews` (create-only, nothing stored).
    TokenReview,
    /// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews` (`kubectl auth can-i`).
    SelfSubjectAccessReview,
}

struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// The served group named `group` (its static name), if any.
fn served_group(group: &str) -> Option<&'static str> {
    Kind::ALL.iter().map(|k| k.group()).find(|g| !g.is_empty() && *g == group)
}

/// The served group-version, if any.
fn served_group_version(group: &str, version: &str) -> Option<(&'static str, &'static str)> {
    Kind::ALL.iter().find(|k| k.group() == group && k.version() == version).map(|k| (k.group(), k.version()))
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["version"] => Some(Route::Version),
        ["healthz" | "readyz" | "livez"] => Some(Route::Health),
        ["openapi", "v3"] => Some(Route::OpenApiRoot),
        ["openapi", "v3", rest @ ..] => Some(Route::OpenApi(rest.join("/"))),
        ["api"] => Some(Route::CoreVersions),
        ["api", "v1"] => Some(Route::Resources("", "v1")),
        ["apis"] => Some(Route::Groups),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => Some(Route::TokenReview),
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => Some(Route::SelfSubjectAccessReview),
        ["apis", group] => served_group(group).map(Route::Group),
        ["apis", group, version] => served_group_version(group, version).map(|(g, v)| Route::Resources(g, v)),
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => None,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let target = |kind: Kind, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Route::Object(Target {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource: sub.map(str::to_owned),
        }))
    };
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(kind) = Kind::from_plural(group, version, plural).filter(|k| k.namespaced())
    {
        return match tail {
            [] => target(kind, Some(namespace), None, None),
            [name] => target(kind, Some(namespace), Some(name), None),
            [name, sub] => target(kind, Some(namespace), Some(name), Some(sub)),
            _ => None,
        };
    }
    let (plural, tail) = rest.split_first()?;
    let kind = Kind::from_plural(group, version, plural)?;
    match (kind.namespaced(), tail) {
        (_, []) => target(kind, None, None, None),
        (false, [name]) => target(kind, None, Some(name), None),
        (false, [name, sub]) => target(kind, None, Some(name), Some(sub)),
        _ => None,
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            Err(ApiError::new(413, "RequestEntityTooLarge", format!("cannot read the request body: {error}")))
        }
    }
}

fn parse_json(body: &[u8], what: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("cannot decode the {what} as JSON: {e}")))
}

/// How objects are presented in a response, from the `Accept` header: the first media range
/// the server can produce wins, as on the API server (kubectl asks for a Table v1, then a
/// Table v1beta1, then plain JSON). Protobuf, CBOR and unknown `as=` kinds are passed over;
/// when nothing matches, plain JSON is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presentation {
    Object,
    PartialMetadata,
    Table(TableVersion),
}

fn negotiate(request: &Request<Incoming>) -> Presentation {
    let accept: Vec<String> =
        request.headers().get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    for range in accept.iter().flat_map(|header| header.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !matches!(media, "application/json" | "*/*" | "application/*") {
            continue;
        }
        let params: Vec<(&str, &str)> =
            parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.trim(), v.trim())).collect();
        let param = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let meta_group = param("g").is_none_or(|g| g == "meta.k8s.io");
        match (param("as"), param("v")) {
            (None, _) => return Presentation::Object,
            (Some("Table"), Some("v1")) if meta_group => return Presentation::Table(TableVersion::V1),
            (Some("Table"), Some("v1beta1")) if meta_group => return Presentation::Table(TableVersion::V1beta1),
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), _) if meta_group => {
                return Presentation::PartialMetadata;
            }
            _ => {}
        }
    }
    Presentation::Object
}

fn accepts_aggregated_discovery(request: &Request<Incoming>) -> bool {
    request.headers().get_all(ACCEPT).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("as=APIGroupDiscoveryList")))
}

/// The object reduced to `PartialObjectMetadata`, for metadata-only clients.
fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub(crate) async fn handle(request: Request<Incoming>, context: &ServerContext) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let not_found = || {
        error_response(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ))
    };
    let Some(route) = route(&path) else {
        return not_found();
    };
    let user = match &context.access {
        Access::Rbac { admin_token, anonymous_is_admin } => {
            let header = request.headers().get(hyper::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
            let checked = access::authenticate(&context.store, admin_token, *anonymous_is_admin, header)
                .and_then(|user| access::impersonate(&context.store, user, request.headers()))
                .and_then(|user| {
                    let attributes = attributes(&route, request.method(), &path, request.uri().query());
                    access::authorize(&context.store, &user, &attributes).inspect_err(|e| {
                        tracing::info!(user = %user.name, "{}", e.message);
                    })?;
                    Ok(user)
                });
            match checked {
                Ok(user) => user,
                Err(error) => return error_response(&error),
            }
        }
        // Open access: every request is the administrator's.
        Access::Open => UserInfo::admin(),
    };
    // Admission (ValidatingAdmissionPolicy) judges writes by this user.
    crate::admission::REQUEST_USER.scope(user, dispatch(request, context, route, path)).await
}

async fn dispatch(request: Request<Incoming>, context: &ServerContext, route: Route, path: String) -> Response<Body> {
    let not_found = || {
        error_response(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ))
    };
    let aggregated = accepts_aggregated_discovery(&request);
    match route {
        Route::Version => json_response(
            200,
            &json!({
                "major": "1",
                "minor": "35",
                "gitVersion": "v1.35.0-skein-kube-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "1970-01-01T00:00:00Z",
                "goVersion": "none",
                "compiler": "none",
                "platform": "linux/amd64",
            }),
        ),
        Route::Health => text_response("ok"),
        Route::OpenApiRoot => json_response(200, openapi::root()),
        Route::OpenApi(rest) => match openapi::group_version(&rest) {
            Some(document) => json_response(200, document),
            None => not_found(),
        },
        Route::CoreVersions if aggregated => discovery_aggregated(true),
        Route::CoreVersions => json_response(
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": context.addr.to_string()}],
            }),
        ),
        Route::Groups if aggregated => discovery_aggregated(false),
        Route::Groups => {
            let groups: Vec<Value> = groups().into_iter().map(group_json).collect();
            json_response(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        Route::Group(group) => {
            let mut body = group_json(group);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            json_response(200, &body)
        }
        Route::Resources(group, version) => json_response(200, &resource_list(group, version)),
        Route::SelfSubjectAccessReview => match access_review(request, context).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        },
        Route::TokenReview => match token_review(request, context).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        },
        Route::Object(target) => match handle_object(request, context, target, &path).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        },
    }
}

/// What a request asks to do, in RBAC's terms (the API server's request info).
fn attributes(route: &Route, method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let resource = |verb, group: &str, resource: &str, target: Option<&Target>| Attributes::Resource {
        verb,
        group: group.to_owned(),
        resource: resource.to_owned(),
        subresource: target.and_then(|t| t.subresource.clone()),
        // A Namespace's own name is its namespace, as the API server's request info has it.
        namespace: target.and_then(|t| match (t.kind, &t.name) {
            (Kind::Namespace, Some(name)) => Some(name.clone()),
            _ => t.namespace.clone(),
        }),
        name: target.and_then(|t| t.name.clone()),
    };
    match route {
        Route::TokenReview => resource("create", "authentication.k8s.io", "tokenreviews", None),
        Route::SelfSubjectAccessReview => resource("create", "authorization.k8s.io", "selfsubjectaccessreviews", None),
        Route::Object(target) => {
            let named = target.name.is_some();
            let verb = match *method {
                Method::GET if !named && Query::parse(query).flag("watch") => "watch",
                Method::GET if named => "get",
                Method::GET => "list",
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE if named => "delete",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            resource(verb, target.kind.group(), target.kind.plural(), Some(target))
        }
        _ => Attributes::NonResource { verb: method.as_str().to_lowercase(), path: path.to_owned() },
    }
}

/// The request body's media type (`Content-Type` without parameters), or `""`.
fn media_type(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

/// 415 for a body that is not JSON.
fn json_body_only(request: &Request<Incoming>) -> Result<(), ApiError> {
    match media_type(request).as_str() {
        "" | "application/json" | "*/*" => Ok(()),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (got {other:?})"
            ),
        )),
    }
}

/// A SelfSubjectAccessReview: may the request's user do what `spec` says? (Under open access
/// everything is allowed.)
async fn access_review(request: Request<Incoming>, context: &ServerContext) -> Result<Response<Body>, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on selfsubjectaccessreviews: only create",
            request.method()
        )));
    }
    // kubectl's typed client sends the review as protobuf.
    let protobuf = media_type(&request) == "application/vnd.kubernetes.protobuf";
    if !protobuf {
        json_body_only(&request)?;
    }
    let body = read_body(request).await?;
    let mut review = if protobuf {
        crate::protobuf::decode_self_subject_access_review(&body)
            .map_err(|why| ApiError::bad_request(format!("cannot decode the SelfSubjectAccessReview: {why}")))?
    } else {
        parse_json(&body, "SelfSubjectAccessReview")?
    };
    let attributes = access::review_attributes(&review)?;
    let allowed = match &context.access {
        Access::Open => Ok(()),
        Access::Rbac { .. } => {
            let user = crate::admission::current_user().unwrap_or_default();
            access::authorize(&context.store, &user, &attributes)
        }
    };
    review["status"] = match allowed {
        Ok(()) => json!({"allowed": true, "reason": "allowed by RBAC"}),
        // As RBAC answers a review: no reason for what no rule grants (kubectl prints "no").
        Err(_) => json!({"allowed": false}),
    };
    Ok(json_response(201, &review))
}

async fn token_review(request: Request<Incoming>, context: &ServerContext) -> Result<Response<Body>, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on tokenreviews: only create",
            request.method()
        )));
    }
    let body = read_body(request).await?;
    let review = parse_json(&body, "TokenReview")?;
    Ok(json_response(201, &context.store.review_token(&review)?))
}

/// The named groups served, in discovery order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for group in Kind::ALL.iter().map(|k| k.group()).filter(|g| !g.is_empty()) {
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// The versions served of a group, in discovery order (the first is preferred).
fn versions(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = Vec::new();
    for kind in Kind::ALL.iter().filter(|k| k.group() == group) {
        if !versions.contains(&kind.version()) {
            versions.push(kind.version());
        }
    }
    versions
}

fn group_json(group: &str) -> Value {
    let versions: Vec<Value> = versions(group)
        .into_iter()
        .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// Every kind is served with every verb.
const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.group() == group && k.version() == version) {
        resources.push(json!({
            "name": kind.plural(),
            "singularName": kind.singular(),
            "namespaced": kind.namespaced(),
            "kind": kind.kind_name(),
            "verbs": VERBS,
            "shortNames": kind.short_names(),
            "categories": kind.categories(),
        }));
        if kind.has_status_subresource() {
            resources.push(json!({
                "name": format!("{}/status", kind.plural()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.kind_name(),
                "verbs": ["get", "patch", "update"],
            }));
        }
        if kind.has_scale_subresource() {
            resources.push(json!({
                "name": format!("{}/scale", kind.plural()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if kind == Kind::Pod {
            resources.push(json!({
                "name": "pods/binding",
                "singularName": "",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// `apidiscovery.k8s.io/v2` aggregated discovery, for clients that ask for it.
fn discovery_aggregated(core: bool) -> Response<Body> {
    let groups: Vec<&str> = if core { vec![""] } else { groups() };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let versions: Vec<Value> = versions(group)
                .into_iter()
                .map(|version| {
                    let resources: Vec<Value> = Kind::ALL
                        .into_iter()
                        .filter(|k| k.group() == group && k.version() == version)
                        .map(|kind| {
                            let response_kind = json!({"group": group, "version": version, "kind": kind.kind_name()});
                            let mut subresources = Vec::new();
                            if kind.has_status_subresource() {
                                subresources.push(json!({"subresource": "status", "responseKind": response_kind, "verbs": ["get", "patch", "update"]}));
                            }
                            if kind.has_scale_subresource() {
                                subresources.push(json!({
                                    "subresource": "scale",
                                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                                    "verbs": ["get", "patch", "update"],
                                }));
                            }
                            json!({
                                "resource": kind.plural(),
                                "responseKind": response_kind,
                                "scope": if kind.namespaced() { "Namespaced" } else { "Cluster" },
                                "singularResource": kind.singular(),
                                "verbs": VERBS,
                                "shortNames": kind.short_names(),
                                "categories": kind.categories(),
                                "subresources": subresources,
                            })
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    let mut response = json_response(
        200,
        &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
    );
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
    );
    response
}

/// `Warning: 299 - "<text>"`, the header the API server answers warnings with; quotes and
/// backslashes are escaped and anything a header cannot carry is replaced.
fn warning_header(text: &str) -> HeaderValue {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c == ' ' || c.is_ascii_graphic() => vec![c],
            _ => vec!['?'],
        })
        .collect();
    HeaderValue::from_str(&format!("299 - \"{escaped}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("299 - \"warning\""))
}

fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for warning in warnings {
        response.headers_mut().append("warning", warning_header(warning));
    }
    response
}

fn table_response(value: &Value, version: TableVersion) -> Response<Body> {
    let mut response = json_response(200, value);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(version.content_type()));
    response
}

/// The body of a write checked under `fieldValidation` (when the request gave one): unknown
/// fields dropped or rejected, warnings to answer with.
fn checked_body(
    body: &[u8],
    schema: Schema,
    what: &str,
    validation: Option<FieldValidation>,
) -> Result<(Value, Vec<String>), ApiError> {
    match validation {
        None => Ok((parse_json(body, what)?, Vec::new())),
        Some(directive) => {
            let parsed = schema::parse_body(body, what)?;
            let checked = schema::check(schema, parsed, directive, None)?;
            Ok((checked.object, checked.warnings))
        }
    }
}

fn patch_type(request: &Request<Incoming>) -> Result<PatchType, ApiError> {
    match media_type(request).as_str() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/apply-patch+yaml" | "application/apply-patch+yaml+cbor" => Ok(PatchType::Apply),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ),
        )),
    }
}

/// Decodes a PATCH body: JSON, or YAML for server-side apply. With field validation, duplicate
/// fields of merge and strategic patches are recorded (their paths are the object's).
fn patch_body(body: &[u8], patch_type: PatchType, validation: bool) -> Result<ParsedBody, ApiError> {
    if patch_type == PatchType::Apply {
        let value = parse_json(body, "apply patch").or_else(|_| {
            let text =
                std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the apply patch is not valid UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("cannot decode the apply patch as YAML: {e}")))
        })?;
        return Ok(ParsedBody::without_duplicates(value));
    }
    if validation && matches!(patch_type, PatchType::Merge | PatchType::Strategic) {
        return schema::parse_body(body, "patch");
    }
    Ok(ParsedBody::without_duplicates(parse_json(body, "patch")?))
}

async fn handle_object(
    request: Request<Incoming>,
    context: &ServerContext,
    target: Target,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    let kind = target.kind;
    let namespace = target.namespace.as_deref();
    let name = target.name.as_deref();
    let method = request.method().clone();
    let scale = target.subresource.as_deref() == Some("scale");
    let mode = match target.subresource.as_deref() {
        None => WriteMode::Main,
        Some("status") if kind.has_status_subresource() => WriteMode::Status,
        Some("scale") if kind.has_scale_subresource() && method != Method::POST && method != Method::DELETE => {
            WriteMode::Main
        }
        Some("binding") if kind == Kind::Pod && method == Method::POST => WriteMode::Main,
        Some("token") if kind == Kind::ServiceAccount && method == Method::POST => WriteMode::Main,
        Some(other) => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({} subresource {other:?})", kind.plural()),
            ));
        }
    };
    let verb = match (&method, name) {
        (&Method::GET, None) if query.flag("watch") => Verb::Watch,
        (&Method::GET, None) => Verb::List,
        (&Method::GET, Some(_)) => Verb::Get,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, Some(_)) => Verb::Update,
        (&Method::PATCH, Some(_)) => Verb::Patch,
        (&Method::DELETE, Some(_)) => Verb::Delete,
        (&Method::DELETE, None) => Verb::DeleteCollection,
        _ => return Err(ApiError::method_not_allowed(format!("method {method} is not supported on {path}"))),
    };
    let info = RequestInfo { verb, kind, namespace, name, path };
    if let Some((error, delay)) = context.store.admit(&info) {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        return Err(error);
    }
    let presentation = match negotiate(&request) {
        // Writes answer the object; only reads are printed.
        Presentation::Table(_) if !matches!(verb, Verb::List | Verb::Get | Verb::Watch) || scale => {
            Presentation::Object
        }
        other => other,
    };
    let include = IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
    let present = |object: &Value| {
        if presentation == Presentation::PartialMetadata { partial(object) } else { object.clone() }
    };
    let dry_run = query.dry_run();
    let validation = match query.get("fieldValidation").filter(|v| !v.is_empty()) {
        Some(raw) => Some(FieldValidation::parse(raw)?),
        None => None,
    };
    if scale {
        return handle_scale(request, context, kind, namespace, name.unwrap_or(""), verb, dry_run, validation).await;
    }
    match verb {
        Verb::Watch => watch(context, kind, namespace, &query, presentation, include),
        Verb::List => {
            let list_request = ListRequest {
                label: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
                field: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)?,
                resource_version: query.get("resourceVersion").map(str::to_owned),
                version_match: query.get("resourceVersionMatch").map(str::to_owned),
                limit: match query.get("limit").filter(|l| !l.is_empty()) {
                    Some(raw) => Some(
                        raw.parse()
                            .map_err(|_| ApiError::bad_request(format!("invalid limit {raw:?}: must be an integer")))?,
                    ),
                    None => None,
                },
                continue_token: query.get("continue").filter(|c| !c.is_empty()).map(str::to_owned),
            };
            let page = context.store.list_page(kind, namespace, &list_request)?;
            let mut metadata = Map::new();
            metadata.insert("resourceVersion".into(), json!(page.resource_version.to_string()));
            if let Some(token) = page.continue_token {
                metadata.insert("continue".into(), json!(token));
            }
            if let Some(remaining) = page.remaining {
                metadata.insert("remainingItemCount".into(), json!(remaining));
            }
            if let Presentation::Table(version) = presentation {
                let objects: Vec<&Value> = page.items.iter().map(|o| o.as_ref()).collect();
                let options = TableOptions { version, include, headers: true };
                return Ok(table_response(&table::table(kind, &objects, metadata, options), version));
            }
            let items: Vec<Value> = page.items.iter().map(|o| present(o)).collect();
            let (api_version, list_kind) = if presentation == Presentation::PartialMetadata {
                ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadataList".to_owned())
            } else {
                (kind.api_version().to_owned(), format!("{}List", kind.kind_name()))
            };
            Ok(json_response(
                200,
                &json!({"kind": list_kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
            ))
        }
        Verb::Get => {
            let name = name.unwrap_or("");
            let object = context.store.get(kind, namespace, name).ok_or_else(|| ApiError::not_found(kind, name))?;
            if let Presentation::Table(version) = presentation {
                let mut metadata = Map::new();
                if let Some(rv) = object.pointer("/metadata/resourceVersion") {
                    metadata.insert("resourceVersion".into(), rv.clone());
                }
                let options = TableOptions { version, include, headers: true };
                return Ok(table_response(&table::table(kind, &[&object], metadata, options), version));
            }
            Ok(json_response(200, &present(&object)))
        }
        Verb::Create => {
            let body = read_body(request).await?;
            if target.subresource.as_deref() == Some("binding") {
                let name = name.unwrap_or("");
                let binding = parse_json(&body, "Binding")?;
                let node = binding.pointer("/target/name").and_then(Value::as_str).filter(|n| !n.is_empty());
                let Some(node) = node else {
                    return Err(ApiError::invalid(kind, name, "target.name: Required value: the node to bind to"));
                };
                context.store.bind_pod(namespace, name, node)?;
                return Ok(json_response(
                    201,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ));
            }
            if target.subresource.as_deref() == Some("token") {
                let request = parse_json(&body, "TokenRequest")?;
                let issued =
                    context.store.request_token(namespace.unwrap_or("default"), name.unwrap_or(""), &request)?;
                return Ok(json_response(201, &issued));
            }
            if name.is_some() {
                return Err(ApiError::method_not_allowed(format!("POST is not supported on {path}")));
            }
            if kind.namespaced() && namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "create {} needs a namespace: POST to /…/namespaces/{{namespace}}/{}",
                    kind.plural(),
                    kind.plural()
                )));
            }
            let (object, warnings) = checked_body(&body, Schema::of(kind), kind.kind_name(), validation)?;
            let created = context.store.create(kind, namespace, object, WriteMode::Main, dry_run)?;
            Ok(with_warnings(json_response(201, &present(&created)), &warnings))
        }
        Verb::Update => {
            let body = read_body(request).await?;
            let (object, warnings) = checked_body(&body, Schema::of(kind), kind.kind_name(), validation)?;
            let updated = context.store.update(kind, namespace, name.unwrap_or(""), object, mode, dry_run)?;
            Ok(with_warnings(json_response(200, &present(&updated)), &warnings))
        }
        Verb::Patch => {
            let patch_type = patch_type(&request)?;
            let body = read_body(request).await?;
            let (patch, duplicates) = patch_body(&body, patch_type, validation.is_some())?.into_parts();
            let (patched, warnings) = context.store.patch(
                kind,
                namespace,
                name.unwrap_or(""),
                patch_type,
                &patch,
                query.get("fieldManager"),
                mode,
                dry_run,
                validation.map(|directive| (directive, duplicates)),
            )?;
            Ok(with_warnings(json_response(200, &present(&patched)), &warnings))
        }
        Verb::Delete => {
            let body = read_body(request).await?;
            let options =
                if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { parse_json(&body, "DeleteOptions")? };
            let dry_run = dry_run
                || options.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"));
            let uid = options.pointer("/preconditions/uid").and_then(Value::as_str);
            let rv = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str);
            let deleted = context.store.delete_object(kind, namespace, name.unwrap_or(""), uid, rv, dry_run)?;
            Ok(json_response(200, &present(&deleted)))
        }
        Verb::DeleteCollection => {
            let label = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
            let field = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)?;
            let page =
                context.store.list_page(kind, namespace, &ListRequest { label, field, ..ListRequest::default() })?;
            let mut deleted = Vec::new();
            for object in page.items {
                let (ns, name) = crate::store::key_of(kind, &object);
                // Already gone (deleted concurrently) is fine for a collection delete.
                if let Ok(gone) = context.store.delete_object(kind, Some(&ns), &name, None, None, dry_run) {
                    deleted.push(present(&gone));
                }
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", kind.kind_name()),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": context.store.resource_version().to_string()},
                    "items": deleted,
                }),
            ))
        }
    }
}

/// `/scale` (`autoscaling/v1` Scale): GET, PUT and PATCH read and write the desired replicas.
#[allow(clippy::too_many_arguments)]
async fn handle_scale(
    request: Request<Incoming>,
    context: &ServerContext,
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
    verb: Verb,
    dry_run: bool,
    validation: Option<FieldValidation>,
) -> Result<Response<Body>, ApiError> {
    match verb {
        Verb::Get => Ok(json_response(200, &context.store.get_scale(kind, namespace, name)?)),
        Verb::Update => {
            let body = read_body(request).await?;
            let (scale, warnings) = checked_body(&body, Schema::SCALE, "Scale", validation)?;
            let updated = context.store.update_scale(kind, namespace, name, &scale, dry_run)?;
            Ok(with_warnings(json_response(200, &updated), &warnings))
        }
        Verb::Patch => {
            let patch_type = patch_type(&request)?;
            let body = read_body(request).await?;
            let (patch, duplicates) = patch_body(&body, patch_type, validation.is_some())?.into_parts();
            let (patched, warnings) = context.store.patch_scale(
                kind,
                namespace,
                name,
                patch_type,
                &patch,
                dry_run,
                validation.map(|directive| (directive, duplicates)),
            )?;
            Ok(with_warnings(json_response(200, &patched), &warnings))
        }
        _ => Err(ApiError::method_not_allowed(format!("{verb} is not supported on {}/scale", kind.plural()))),
    }
}

/// One watch event line.
fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": kind.kind_name(), "apiVersion": kind.api_version(), "metadata": metadata}))
}

fn streaming_response(receiver: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::Stream(receiver));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

struct WatchFilter {
    kind: Kind,
    namespace: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
    presentation: Presentation,
    include: IncludeObject,
    /// A table watch sends its column definitions with the first event only, as the API
    /// server does; clients reuse them for the rest.
    headers_sent: bool,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        let namespace_ok = !self.kind.namespaced()
            || self
                .namespace
                .as_deref()
                .is_none_or(|n| object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n));
        namespace_ok && self.label.matches(object) && self.field.matches(object)
    }

    fn present(&mut self, object: &Value) -> Value {
        match self.presentation {
            Presentation::Object => object.clone(),
            Presentation::PartialMetadata => partial(object),
            Presentation::Table(version) => {
                let options = TableOptions { version, include: self.include, headers: !self.headers_sent };
                self.headers_sent = true;
                let mut metadata = Map::new();
                if let Some(rv) = object.pointer("/metadata/resourceVersion") {
                    metadata.insert("resourceVersion".into(), rv.clone());
                }
                table::table(self.kind, &[object], metadata, options)
            }
        }
    }

    /// A BOOKMARK, shaped like the watch's other objects (a table watch gets a row-less Table
    /// carrying the resourceVersion).
    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        match self.presentation {
            Presentation::Table(version) => {
                let mut metadata = json!({"resourceVersion": rv.to_string()});
                if initial_events_end {
                    metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                event_line(
                    "BOOKMARK",
                    &json!({"kind": "Table", "apiVersion": version.api_version(), "metadata": metadata, "columnDefinitions": [], "rows": []}),
                )
            }
            _ => bookmark(self.kind, rv, initial_events_end),
        }
    }

    /// The event this watch sees for a change: objects moving into or out of the selection
    /// appear as ADDED or DELETED, as the API server reports them.
    fn translate(&mut self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.old.as_deref().is_some_and(|o| self.matches(o));
        let event_type = match change.change {
            ChangeType::Added if now => "ADDED",
            ChangeType::Modified if before && now => "MODIFIED",
            ChangeType::Modified if now => "ADDED",
            ChangeType::Modified if before => "DELETED",
            ChangeType::Deleted if before || now => "DELETED",
            _ => return None,
        };
        Some(event_line(event_type, &self.present(&change.object)))
    }
}

fn watch(
    context: &ServerContext,
    kind: Kind,
    namespace: Option<&str>,
    query: &Query,
    presentation: Presentation,
    include: IncludeObject,
) -> Result<Response<Body>, ApiError> {
    let mut filter = WatchFilter {
        kind,
        namespace: namespace.map(str::to_owned),
        label: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?,
        field: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind)?,
        presentation,
        include,
        headers_sent: false,
    };
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty() && *t != "0") {
        Some(raw) => Duration::from_secs(
            raw.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {raw:?}: must be an integer")))?,
        ),
        None => context.default_watch_timeout,
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial_events = query.flag("sendInitialEvents");
    let (sender, receiver) = mpsc::channel::<Bytes>(256);
    let start = match context.store.watch_start(kind, query.get("resourceVersion"), send_initial_events) {
        Ok(start) => start,
        // A too-old (410) or too-new (504) resourceVersion is reported inside the stream, as
        // the API server does, so that clients re-list instead of retrying the same watch.
        Err(error) if error.code == 410 || error.code == 504 => {
            let line = event_line("ERROR", &error.to_status());
            tokio::spawn(async move {
                let _ = sender.send(line).await;
            });
            return Ok(streaming_response(receiver));
        }
        Err(error) => return Err(error),
    };
    let bookmark_interval = context.bookmark_interval;
    let mut end_watches = context.end_watches.clone();
    end_watches.mark_unchanged();
    tokio::spawn(async move {
        let mut receiver_live = start.receiver;
        let mut progress = start.progress;
        let deadline = tokio::time::Instant::now() + timeout;
        let send = |bytes: Bytes| sender.send(bytes);
        for object in &start.initial {
            if filter.matches(object) {
                let line = event_line("ADDED", &filter.present(object));
                if send(line).await.is_err() {
                    return;
                }
            }
        }
        if send_initial_events && send(filter.bookmark(progress, true)).await.is_err() {
            return;
        }
        for change in &start.replay {
            if let Some(line) = filter.translate(change)
                && send(line).await.is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + bookmark_interval, bookmark_interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if bookmarks {
                        let _ = send(filter.bookmark(progress, false)).await;
                    }
                    return;
                }
                _ = ticker.tick(), if bookmarks => {
                    if send(filter.bookmark(progress, false)).await.is_err() {
                        return;
                    }
                }
                _ = end_watches.changed() => return,
                _ = sender.closed() => return,
                received = receiver_live.recv() => match received {
                    Ok(change) => {
                        progress = change.rv;
                        if let Some(line) = filter.translate(&change)
                            && send(line).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow to keep up is closed; its client resumes from the
                    // last resourceVersion it saw, as after any watch timeout.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(streaming_response(receiver))
}
