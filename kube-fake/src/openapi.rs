//! `/openapi/v3`: the discovery document (`paths` → one `serverRelativeURL` per
//! group-version) and one OpenAPI 3.0 document per group-version describing the operations
//! kube-fake serves for each kind.
//!
//! What clients read from it, and why it is shaped so:
//!
//! - `kubectl apply|create|replace` validates through the server when the PATCH operation of
//!   the object's group-version-kind (`x-kubernetes-group-version-kind`) lists the
//!   `fieldValidation` query parameter (cli-runtime `queryParamVerifierV3`); it then sends
//!   `fieldValidation=Strict` instead of downloading schemas to validate itself. Every write
//!   operation here lists it, and the server implements it (see `schema.rs`).
//! - `kubectl apply` computes its strategic merge patch from an OpenAPI component schema
//!   carrying the object's GVK when there is one. The component schemas here describe the
//!   envelope only (apiVersion, kind, metadata, spec, status) and carry no GVK extension, so
//!   kubectl falls back to its compiled-in types, which hold the real patch merge keys.
//!   `kubectl explain` needs full schemas and is not supported.
//!
//! `/openapi/v2` is not served: kubectl reads it (as protobuf) only when v3 fails.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::resource::Kind;

/// The group-versions served, as `api/v1` or `apis/<group>/<version>`, in discovery order.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for kind in Kind::ALL {
        let gv = (kind.group(), kind.version());
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// FNV-1a (64 bit): the document hash in `serverRelativeURL`, which clients use as a cache key.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

struct Documents {
    root: Value,
    /// (`api/v1`, document) per group-version.
    by_path: Vec<(String, Value)>,
}

fn documents() -> &'static Documents {
    static DOCUMENTS: OnceLock<Documents> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        let mut by_path = Vec::new();
        let mut paths = Map::new();
        for (group, version) in group_versions() {
            let document = group_version_document(group, version);
            let hash = fnv1a64(document.to_string().as_bytes());
            let path = gv_path(group, version);
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}));
            by_path.push((path, document));
        }
        Documents { root: json!({"paths": paths}), by_path }
    })
}

/// The discovery document served at `/openapi/v3`.
pub(crate) fn root() -> &'static Value {
    &documents().root
}

/// The document of one group-version (`rest` is what follows `/openapi/v3/`), or `None`.
pub(crate) fn group_version(rest: &str) -> Option<&'static Value> {
    documents().by_path.iter().find(|(path, _)| path == rest).map(|(_, document)| document)
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn dry_run() -> Value {
    query(
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
    )
}

fn field_manager() -> Value {
    query(
        "fieldManager",
        "string",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    )
}

/// The parameter kubectl looks for before trusting the server to validate fields.
fn field_validation() -> Value {
    query(
        "fieldValidation",
        "string",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: unknown fields are dropped silently, and the last of any duplicate fields wins. - Warn: unknown fields are dropped and a warning is sent for each unknown and duplicate field (the default in Kubernetes). - Strict: the request fails with BadRequest naming every unknown and duplicate field.",
    )
}

fn list_parameters() -> Vec<Value> {
    vec![
        query("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        query("continue", "string", "The continue option should be set when retrieving more results from the server."),
        query("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields."),
        query("labelSelector", "string", "A selector to restrict the list of returned objects by their labels."),
        query("limit", "integer", "limit is a maximum number of responses to return for a list call."),
        query(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
        query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        query(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ]
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn responses(definition: &str, codes: &[&str]) -> Value {
    let mut out = Map::new();
    for code in codes {
        out.insert(
            (*code).to_owned(),
            json!({"description": if *code == "201" { "Created" } else if *code == "202" { "Accepted" } else { "OK" },
                   "content": {"application/json": {"schema": schema_ref(definition)}}}),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

/// The GVK extension every operation carries.
fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// `PatchCoreV1NamespacedPodStatus`-style operation identifiers.
fn operation_id(verb: &str, kind: Kind, namespaced_path: bool, suffix: &str) -> String {
    let group: String = match kind.group() {
        "" => "Core".into(),
        group => group
            .split('.')
            .next()
            .unwrap_or(group)
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            })
            .collect(),
    };
    let version = {
        let mut chars = kind.version().chars();
        chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
    };
    let scope = if namespaced_path { "Namespaced" } else { "" };
    format!("{verb}{group}{version}{scope}{}{suffix}", kind.kind_name())
}

struct Op<'a> {
    verb: &'static str,
    action: &'static str,
    kind: Kind,
    namespaced_path: bool,
    suffix: &'a str,
    gvk: Value,
    parameters: Vec<Value>,
    request: Option<Value>,
    responses: Value,
}

fn operation(op: Op<'_>) -> Value {
    let mut value = json!({
        "tags": [format!("{}_{}", if op.kind.group().is_empty() { "core" } else { op.kind.group() }, op.kind.version())],
        "description": format!("{} {}{}", op.action, op.kind.kind_name(), op.suffix),
        "operationId": operation_id(op.verb, op.kind, op.namespaced_path, op.suffix),
        "parameters": op.parameters,
        "responses": op.responses,
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": op.gvk,
    });
    if let Some(body) = op.request {
        value["requestBody"] = body;
    }
    value
}

fn body_of(definition: &str) -> Value {
    json!({"content": {"*/*": {"schema": schema_ref(definition)}}, "required": true})
}

/// The four patch types the server takes (`kubectl apply` checks that strategic merge patch
/// is among them before sending one).
fn patch_body() -> Value {
    let patch = json!({"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")});
    json!({"content": {
        "application/apply-patch+yaml": patch,
        "application/json-patch+json": patch,
        "application/merge-patch+json": patch,
        "application/strategic-merge-patch+json": patch,
    }, "required": true})
}

/// GET, PUT and PATCH of one object or of one of its subresources.
fn item_operations(
    kind: Kind,
    namespaced: bool,
    suffix: &str,
    gvk_value: &Value,
    definition: &str,
) -> Map<String, Value> {
    let mut item = Map::new();
    let op = |verb, action, parameters, request, responses| {
        operation(Op {
            verb,
            action,
            kind,
            namespaced_path: namespaced,
            suffix,
            gvk: gvk_value.clone(),
            parameters,
            request,
            responses,
        })
    };
    item.insert("get".into(), op("read", "get", vec![], None, responses(definition, &["200"])));
    item.insert(
        "put".into(),
        op(
            "replace",
            "put",
            vec![dry_run(), field_manager(), field_validation()],
            Some(body_of(definition)),
            responses(definition, &["200", "201"]),
        ),
    );
    item.insert(
        "patch".into(),
        op(
            "patch",
            "patch",
            vec![
                dry_run(),
                field_manager(),
                field_validation(),
                query("force", "boolean", "Force is going to \"force\" Apply requests."),
            ],
            Some(patch_body()),
            responses(definition, &["200", "201"]),
        ),
    );
    item
}

fn group_version_document(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    for kind in Kind::ALL.into_iter().filter(|k| k.group() == group && k.version() == version) {
        let spec = kind.spec();
        let definition = spec.definition;
        let list_definition = format!("{definition}List");
        let kind_gvk = gvk(group, version, kind.kind_name());
        let namespaced = kind.namespaced();
        let scope = if namespaced { format!("{prefix}/namespaces/{{namespace}}") } else { prefix.clone() };
        let mut path_parameters = Vec::new();
        if namespaced {
            path_parameters
                .push(path_parameter("namespace", "object name and auth scope, such as for teams and projects"));
        }
        let op = |verb, action, parameters, request, responses| {
            operation(Op {
                verb,
                action,
                kind,
                namespaced_path: namespaced,
                suffix: "",
                gvk: kind_gvk.clone(),
                parameters,
                request,
                responses,
            })
        };
        let mut collection = Map::new();
        collection
            .insert("get".into(), op("list", "list", list_parameters(), None, responses(&list_definition, &["200"])));
        collection.insert(
            "post".into(),
            op(
                "create",
                "post",
                vec![dry_run(), field_manager(), field_validation()],
                Some(body_of(definition)),
                responses(definition, &["200", "201", "202"]),
            ),
        );
        collection.insert(
            "delete".into(),
            op(
                "deleteCollection",
                "deletecollection",
                vec![dry_run()],
                None,
                responses("io.k8s.apimachinery.pkg.apis.meta.v1.Status", &["200"]),
            ),
        );
        collection.insert("parameters".into(), Value::Array(path_parameters.clone()));
        paths.insert(format!("{scope}/{}", kind.plural()), Value::Object(collection));

        let mut item_parameters = vec![path_parameter("name", &format!("name of the {}", kind.kind_name()))];
        item_parameters.extend(path_parameters.clone());
        let mut item = item_operations(kind, namespaced, "", &kind_gvk, definition);
        item.insert(
            "delete".into(),
            op(
                "delete",
                "delete",
                vec![dry_run()],
                None,
                responses("io.k8s.apimachinery.pkg.apis.meta.v1.Status", &["200", "202"]),
            ),
        );
        item.insert("parameters".into(), Value::Array(item_parameters.clone()));
        paths.insert(format!("{scope}/{}/{{name}}", kind.plural()), Value::Object(item));

        if kind.has_status_subresource() {
            let mut status = item_operations(kind, namespaced, "Status", &kind_gvk, definition);
            status.insert("parameters".into(), Value::Array(item_parameters.clone()));
            paths.insert(format!("{scope}/{}/{{name}}/status", kind.plural()), Value::Object(status));
        }
        if kind.has_scale_subresource() {
            let scale_gvk = gvk("autoscaling", "v1", "Scale");
            let mut scale = item_operations(kind, namespaced, "Scale", &scale_gvk, "io.k8s.api.autoscaling.v1.Scale");
            scale.insert("parameters".into(), Value::Array(item_parameters.clone()));
            paths.insert(format!("{scope}/{}/{{name}}/scale", kind.plural()), Value::Object(scale));
            schemas.insert(
                "io.k8s.api.autoscaling.v1.Scale".into(),
                envelope("Scale represents a scaling request for a resource."),
            );
        }
        if kind == Kind::Pod {
            let binding = operation(Op {
                verb: "create",
                action: "post",
                kind,
                namespaced_path: true,
                suffix: "Binding",
                gvk: gvk("", "v1", "Binding"),
                parameters: vec![dry_run(), field_manager(), field_validation()],
                request: Some(body_of("io.k8s.api.core.v1.Binding")),
                responses: responses("io.k8s.api.core.v1.Binding", &["200", "201", "202"]),
            });
            paths.insert(
                format!("{scope}/pods/{{name}}/binding"),
                json!({"post": binding, "parameters": item_parameters}),
            );
            schemas.insert("io.k8s.api.core.v1.Binding".into(), envelope("Binding ties one object to another."));
        }
        if namespaced {
            let all = operation(Op {
                verb: "list",
                action: "list",
                kind,
                namespaced_path: false,
                suffix: "ForAllNamespaces",
                gvk: kind_gvk.clone(),
                parameters: list_parameters(),
                request: None,
                responses: responses(&list_definition, &["200"]),
            });
            paths.insert(format!("{prefix}/{}", kind.plural()), json!({"get": all}));
        }
        schemas.insert(
            definition.into(),
            envelope(&format!("{} ({}), as kube-fake serves it.", kind.kind_name(), kind.api_version())),
        );
        schemas.insert(
            list_definition,
            json!({
                "description": format!("{}List is a list of {}.", kind.kind_name(), kind.kind_name()),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
                    "items": {"type": "array", "items": schema_ref(definition)},
                },
            }),
        );
    }
    for (name, description) in [
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "ObjectMeta is metadata that all persisted resources must have.",
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
            "ListMeta describes metadata that synthetic resources must have.",
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
            "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            "Status is a return value for calls that don't return other objects.",
        ),
    ] {
        schemas.insert(name.into(), json!({"description": description, "type": "object"}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (skein kube-fake)", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The schema of an object: its envelope, without field schemas and without a GVK extension
/// (see the module documentation for why).
fn envelope(description: &str) -> Value {
    json!({
        "description": format!("{description} Field schemas are not published: kube-fake validates fields against the k8s-openapi types (fieldValidation)."),
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": {"type": "object"},
            "status": {"type": "object"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_points_at_every_group_version_document() {
        let paths = root()["paths"].as_object().unwrap();
        for (group, version) in group_versions() {
            let key = gv_path(group, version);
            let url = paths[&key]["serverRelativeURL"].as_str().unwrap();
            assert!(url.starts_with(&format!("/openapi/v3/{key}?hash=")), "{url}");
            assert!(group_version(&key).is_some(), "{key}");
        }
        assert!(paths.contains_key("api/v1") && paths.contains_key("apis/apps/v1"));
        assert!(group_version("apis/nothing/v1").is_none());
    }

    /// What cli-runtime's `supportsQueryParamV3` and kubectl's `gvkSupportsPatchOpenAPIV3`
    /// look for: a PATCH operation for the GVK listing `fieldValidation` in the query and
    /// taking strategic merge patches.
    #[test]
    fn every_kind_advertises_field_validation_and_strategic_merge_patch() {
        for kind in Kind::ALL {
            let document = group_version(&gv_path(kind.group(), kind.version())).unwrap();
            let patches: Vec<&Value> = document["paths"]
                .as_object()
                .unwrap()
                .values()
                .filter_map(|path| path.get("patch"))
                .filter(|op| {
                    op["x-kubernetes-group-version-kind"] == gvk(kind.group(), kind.version(), kind.kind_name())
                })
                .collect();
            assert!(!patches.is_empty(), "{kind}");
            for patch in patches {
                let parameters = patch["parameters"].as_array().unwrap();
                assert!(parameters.iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"), "{kind}");
                assert!(patch["requestBody"]["content"].get("application/strategic-merge-patch+json").is_some());
            }
            // No component schema claims the GVK: kubectl must use its own patch metadata.
            let schemas = document["components"]["schemas"].as_object().unwrap();
            assert!(schemas.values().all(|s| s.get("x-kubernetes-group-version-kind").is_none()));
        }
        let apps = group_version("apis/apps/v1").unwrap();
        assert_eq!(
            apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"]["x-kubernetes-group-version-kind"],
            gvk("autoscaling", "v1", "Scale")
        );
        assert_eq!(
            apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]["operationId"],
            "patchAppsV1NamespacedDeployment"
        );
    }
}
