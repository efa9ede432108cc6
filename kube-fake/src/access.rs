//! Authentication and RBAC authorization, as an API server with `--authorization-mode=RBAC`
//! does them, for [`Access::Rbac`].
//!
//! A request's bearer token names its user: the admin token configured for the server (user
//! `kubernetes-admin`, group `system:masters`, which RBAC never restricts), or a
//! ServiceAccount token this server issued for the API's audience
//! (`system:serviceaccount:<namespace>:<name>`, groups `system:serviceaccounts`,
//! `system:serviceaccounts:<namespace>`, `system:authenticated`). No token is
//! `system:anonymous` (or, with `anonymous_is_admin`, the administrator, as on the old
//! insecure port); a token that does not authenticate is 401. The user may then do what
//! the ClusterRoleBindings and the RoleBindings of the request's namespace grant it —
//! verbs, API groups, resources and subresources, resource names, non-resource URLs — and
//! anything else is 403 with the API server's wording. The built-in grants of a cluster are
//! kept: discovery, OpenAPI and `/version` for every authenticated user (`system:discovery`,
//! `system:public-info-viewer`), `/version` and the health paths for anyone.

use serde_json::Value;

use crate::error::ApiError;
use crate::resource::Kind;
use crate::store::Store;
use crate::tokens::DEFAULT_AUDIENCE;

/// Who may do what on a [`crate::FakeApiServer`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Every request is allowed, with or without a token (tests that are not about access).
    #[default]
    Open,
    /// Bearer tokens authenticate and RBAC objects authorize, as on a cluster.
    Rbac {
        /// The token of the cluster's administrator (group `system:masters`).
        admin_token: String,
        /// A request without a token is the administrator's, as on the insecure port API
        /// servers served before Kubernetes 1.20 — for a kubectl talking plain HTTP, over
        /// which it sends no credential (`skein-lab`'s users). Otherwise it is
        /// `system:anonymous`. A token that is present is always checked.
        anonymous_is_admin: bool,
    },
}

/// An authenticated (or anonymous) user.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name (`system:serviceaccount:<namespace>:<name>` for a ServiceAccount).
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (a bound token's `authentication.kubernetes.io/node-name`, ...):
    /// each a list of strings.
    pub extra: serde_json::Map<String, Value>,
}

impl UserInfo {
    /// The cluster's administrator (group `system:masters`).
    pub fn admin() -> UserInfo {
        UserInfo {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            ..UserInfo::default()
        }
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request asks to do, in RBAC's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    /// On a resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
        verb: &'static str,
        /// API group (`""` for the core group).
        group: String,
        /// Plural resource name.
        resource: String,
        /// Subresource (`status`, `token`, ...).
        subresource: Option<String>,
        /// Namespace, for a namespaced resource.
        namespace: Option<String>,
        /// Object name, when the request names one.
        name: Option<String>,
    },
    /// On a path that is not a resource (`/version`, discovery, OpenAPI).
    NonResource {
        /// The HTTP method in lower case (`get`, `post`).
        verb: String,
        /// The path.
        path: String,
    },
}

/// The user a request's `Authorization` header names, or 401.
pub fn authenticate(
    store: &Store,
    admin_token: &str,
    anonymous_is_admin: bool,
    header: Option<&str>,
) -> Result<UserInfo, ApiError> {
    let admin = UserInfo::admin;
    let Some(header) = header else {
        if anonymous_is_admin {
            return Ok(admin());
        }
        return Ok(UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..UserInfo::default()
        });
    };
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let token = header.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or_else(unauthorized)?;
    if token == admin_token {
        return Ok(admin());
    }
    match store.check_token(token, &[DEFAULT_AUDIENCE.to_owned()]) {
        Ok((issued, _)) => Ok(UserInfo {
            name: format!("system:serviceaccount:{}:{}", issued.namespace, issued.service_account),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", issued.namespace),
                "system:authenticated".into(),
            ],
            extra: crate::tokens::user_extra(&issued),
        }),
        Err(why) => {
            tracing::debug!(%why, "a bearer token did not authenticate");
            Err(unauthorized())
        }
    }
}

/// The user `Impersonate-User` (with `Impersonate-Group`s) names, if `user` may impersonate
/// (RBAC verb `impersonate` on `users` and `groups`, or on `serviceaccounts` in the named
/// account's namespace; `system:masters` may), as the API server's impersonation filter
/// does; otherwise `user` itself. What `kubectl --as` sends.
pub fn impersonate(store: &Store, user: UserInfo, headers: &hyper::HeaderMap) -> Result<UserInfo, ApiError> {
    let Some(name) = headers.get("impersonate-user").and_then(|v| v.to_str().ok()) else { return Ok(user) };
    let groups: Vec<String> =
        headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    let account = name.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'));
    let mut wanted = vec![match account {
        Some((namespace, account)) => Attributes::Resource {
            verb: "impersonate",
            group: String::new(),
            resource: "serviceaccounts".into(),
            subresource: None,
            namespace: Some(namespace.to_owned()),
            name: Some(account.to_owned()),
        },
        None => Attributes::Resource {
            verb: "impersonate",
            group: String::new(),
            resource: "users".into(),
            subresource: None,
            namespace: None,
            name: Some(name.to_owned()),
        },
    }];
    wanted.extend(groups.iter().map(|g| Attributes::Resource {
        verb: "impersonate",
        group: String::new(),
        resource: "groups".into(),
        subresource: None,
        namespace: None,
        name: Some(g.clone()),
    }));
    for attributes in &wanted {
        authorize(store, &user, attributes)?;
    }
    let mut all_groups = groups;
    if let Some((namespace, _)) = account {
        all_groups.push("system:serviceaccounts".into());
        all_groups.push(format!("system:serviceaccounts:{namespace}"));
    }
    if name != "system:anonymous" && !all_groups.iter().any(|g| g == "system:authenticated") {
        all_groups.push("system:authenticated".into());
    }
    Ok(UserInfo { name: name.to_owned(), groups: all_groups, ..UserInfo::default() })
}

/// What a SelfSubjectAccessReview asks about (`spec.resourceAttributes` or
/// `spec.nonResourceAttributes`), as [`Attributes`].
pub fn review_attributes(review: &Value) -> Result<Attributes, ApiError> {
    let text = |v: Option<&Value>, field: &str| v.and_then(|a| a.get(field)).and_then(Value::as_str).map(str::to_owned);
    let verb = |v: Option<&Value>| -> Result<&'static str, ApiError> {
        let verb = text(v, "verb").unwrap_or_default();
        KNOWN_VERBS.iter().find(|k| **k == verb).copied().ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                format!("SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes.verb: Unsupported value: {verb:?}"),
            )
        })
    };
    if let Some(r) = review.pointer("/spec/resourceAttributes") {
        let r = Some(r);
        return Ok(Attributes::Resource {
            verb: verb(r)?,
            group: text(r, "group").unwrap_or_default(),
            resource: text(r, "resource").unwrap_or_default(),
            subresource: text(r, "subresource").filter(|s| !s.is_empty()),
            namespace: text(r, "namespace").filter(|s| !s.is_empty()),
            name: text(r, "name").filter(|s| !s.is_empty()),
        });
    }
    if let Some(n) = review.pointer("/spec/nonResourceAttributes") {
        let n = Some(n);
        return Ok(Attributes::NonResource {
            verb: text(n, "verb").unwrap_or_default(),
            path: text(n, "path").unwrap_or_default(),
        });
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec: Invalid value: one of resourceAttributes or nonResourceAttributes is required",
    ))
}

/// The verbs a review may ask about.
const KNOWN_VERBS: [&str; 10] =
    ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "impersonate", "*"];

/// Allows the request or answers 403 Forbidden, worded as the API server words it.
pub fn authorize(store: &Store, user: &UserInfo, attributes: &Attributes) -> Result<(), ApiError> {
    if user.in_group("system:masters") || allowed(store, user, attributes) {
        return Ok(());
    }
    Err(forbidden(user, attributes))
}

fn allowed(store: &Store, user: &UserInfo, attributes: &Attributes) -> bool {
    if let Attributes::NonResource { verb, path } = attributes {
        let public = ["/version", "/healthz", "/livez", "/readyz"];
        let discovery = ["/api", "/apis", "/openapi"];
        let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
        if verb == "get" && public.iter().any(|p| under(p)) {
            return true;
        }
        if verb == "get" && user.in_group("system:authenticated") && discovery.iter().any(|p| under(p)) {
            return true;
        }
    }
    if let Attributes::Resource { verb: "create", group, resource, .. } = attributes
        && group == "authorization.k8s.io"
        && resource == "selfsubjectaccessreviews"
        && user.in_group("system:authenticated")
    {
        // system:basic-user: anyone authenticated may ask what they may do.
        return true;
    }
    let namespace = match attributes {
        Attributes::Resource { namespace, .. } => namespace.as_deref(),
        Attributes::NonResource { .. } => None,
    };
    // Cluster-wide grants, then those of the request's namespace.
    let mut grants: Vec<(Value, Option<&str>)> =
        store.list(Kind::ClusterRoleBinding, None).into_iter().map(|b| (b, None)).collect();
    if let Some(ns) = namespace {
        grants.extend(store.list(Kind::RoleBinding, Some(ns)).into_iter().map(|b| (b, Some(ns))));
    }
    grants.iter().filter(|(binding, ns)| binds(binding, *ns, user)).any(|(binding, ns)| {
        rules_of(store, binding, *ns).iter().any(|rule| rule_allows(rule, attributes, ns.is_some()))
    })
}

/// True if one of `binding`'s subjects is `user`. `namespace` is a RoleBinding's namespace
/// (the default of its ServiceAccount subjects).
fn binds(binding: &Value, namespace: Option<&str>, user: &UserInfo) -> bool {
    let subjects = binding.get("subjects").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    subjects.iter().any(|s| {
        let field = |f: &str| s.get(f).and_then(Value::as_str).unwrap_or_default();
        match field("kind") {
            "User" => field("name") == user.name,
            "Group" => user.in_group(field("name")),
            "ServiceAccount" => {
                let ns = Some(field("namespace")).filter(|n| !n.is_empty()).or(namespace).unwrap_or_default();
                user.name == format!("system:serviceaccount:{ns}:{}", field("name"))
            }
            _ => false,
        }
    })
}

/// The rules of the role `binding` refers to (a ClusterRole, or a Role of `namespace`).
fn rules_of(store: &Store, binding: &Value, namespace: Option<&str>) -> Vec<Value> {
    let field = |f: &str| binding.pointer(&format!("/roleRef/{f}")).and_then(Value::as_str).unwrap_or_default();
    let role = match (field("kind"), namespace) {
        ("ClusterRole", _) => store.get(Kind::ClusterRole, None, field("name")),
        ("Role", Some(ns)) => store.get(Kind::Role, Some(ns), field("name")),
        _ => None,
    };
    role.and_then(|r| r.get("rules").and_then(Value::as_array).cloned()).unwrap_or_default()
}

fn list_has(rule: &Value, field: &str, want: &str) -> bool {
    rule.get(field).and_then(Value::as_array).is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

/// RBAC's rule match. `namespaced_grant`: the rule comes from a RoleBinding, which never
/// grants non-resource URLs.
fn rule_allows(rule: &Value, attributes: &Attributes, namespaced_grant: bool) -> bool {
    match attributes {
        Attributes::Resource { verb, group, resource, subresource, name, .. } => {
            if !list_has(rule, "verbs", verb) || !list_has(rule, "apiGroups", group) {
                return false;
            }
            let resources = rule.get("resources").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let resource_ok = resources
                .iter()
                .filter_map(Value::as_str)
                .any(|r| r == "*" || r == combined || subresource.as_ref().is_some_and(|sub| r == format!("*/{sub}")));
            if !resource_ok {
                return false;
            }
            let names = rule.get("resourceNames").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            names.is_empty() || name.as_ref().is_some_and(|n| names.iter().any(|v| v == n.as_str()))
        }
        Attributes::NonResource { verb, path } => {
            if namespaced_grant || !list_has(rule, "verbs", verb) {
                return false;
            }
            let urls = rule.get("nonResourceURLs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            urls.iter().filter_map(Value::as_str).any(|u| match u.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => u == path,
            })
        }
    }
}

/// `pods "p" is forbidden: User "u" cannot patch resource "pods/status" in API group "" in
/// the namespace "ns"`, as the API server says it.
fn forbidden(user: &UserInfo, attributes: &Attributes) -> ApiError {
    let message = match attributes {
        Attributes::Resource { verb, group, resource, subresource, namespace, name } => {
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            // The resource as a group-qualified name (`leases.coordination.k8s.io`), without
            // the subresource, as the API server's NewForbidden names it.
            let qualified = if group.is_empty() { resource.clone() } else { format!("{resource}.{group}") };
            let what = match name {
                Some(n) => format!("{qualified} {n:?}"),
                None => qualified,
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".to_owned(),
            };
            format!(
                "{what} is forbidden: User {:?} cannot {verb} resource {combined:?} in API group {group:?} {scope}",
                user.name
            )
        }
        Attributes::NonResource { verb, path } => {
            format!("forbidden: User {:?} cannot {verb} path {path:?}", user.name)
        }
    };
    let mut error = ApiError::new(403, "Forbidden", message);
    if let Attributes::Resource { group, resource, name, .. } = attributes {
        error.name = name.clone();
        error.resource = Kind::ALL.into_iter().find(|k| k.group() == group && k.plural() == resource);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(
        verb: &'static str,
        resource: &str,
        sub: Option<&str>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb,
            group: String::new(),
            resource: resource.into(),
            subresource: sub.map(Into::into),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn rules_match_verbs_resources_subresources_and_names() {
        let rule = json!({"apiGroups": [""], "resources": ["pods", "nodes/status"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &resource("get", "pods", None, Some("a"), Some("p")), false));
        assert!(!rule_allows(&rule, &resource("patch", "pods", None, Some("a"), Some("p")), false));
        assert!(
            !rule_allows(&rule, &resource("get", "pods", Some("status"), Some("a"), Some("p")), false),
            "pods ≠ pods/status"
        );
        assert!(rule_allows(&rule, &resource("get", "nodes", Some("status"), None, Some("n")), false));
        assert!(!rule_allows(&rule, &resource("get", "nodes", None, None, Some("n")), false), "nodes/status ≠ nodes");
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["c"]});
        assert!(rule_allows(&named, &resource("get", "configmaps", None, Some("a"), Some("c")), false));
        assert!(!rule_allows(&named, &resource("get", "configmaps", None, Some("a"), Some("d")), false));
        assert!(
            !rule_allows(&named, &resource("list", "configmaps", None, Some("a"), None), false),
            "a list names nothing"
        );
        let all = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(&all, &resource("delete", "pods", Some("status"), Some("a"), Some("p")), false));
        let status = json!({"apiGroups": [""], "resources": ["*/status"], "verbs": ["update"]});
        assert!(rule_allows(&status, &resource("update", "pods", Some("status"), Some("a"), Some("p")), false));
        let urls = json!({"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]});
        let get = |path: &str| Attributes::NonResource { verb: "get".into(), path: path.into() };
        assert!(rule_allows(&urls, &get("/metrics"), false));
        assert!(rule_allows(&urls, &get("/debug/pprof"), false));
        assert!(!rule_allows(&urls, &get("/metricsx"), false));
        assert!(!rule_allows(&urls, &get("/metrics"), true), "a RoleBinding grants no URL");
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let user = UserInfo {
            name: "system:serviceaccount:kube-system:agent".into(),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
            ..UserInfo::default()
        };
        let binding = |subject: Value| json!({"subjects": [subject]});
        assert!(binds(
            &binding(json!({"kind": "ServiceAccount", "name": "agent", "namespace": "kube-system"})),
            None,
            &user
        ));
        assert!(binds(&binding(json!({"kind": "ServiceAccount", "name": "agent"})), Some("kube-system"), &user));
        assert!(!binds(
            &binding(json!({"kind": "ServiceAccount", "name": "agent", "namespace": "default"})),
            None,
            &user
        ));
        assert!(binds(&binding(json!({"kind": "Group", "name": "system:serviceaccounts"})), None, &user));
        assert!(binds(&binding(json!({"kind": "User", "name": user.name})), None, &user));
        assert!(!binds(&binding(json!({"kind": "User", "name": "agent"})), None, &user));
        assert!(!binds(&json!({}), None, &user), "no subjects");
    }

    #[test]
    fn no_token_is_anonymous_or_on_the_insecure_port_the_administrator() {
        let store = Store::new(crate::StoreOptions::default());
        let anonymous = authenticate(&store, "admin", false, None).unwrap();
        assert_eq!(anonymous.name, "system:anonymous");
        let admin = authenticate(&store, "admin", true, None).unwrap();
        assert!(admin.in_group("system:masters"));
        assert!(authenticate(&store, "admin", false, Some("Bearer admin")).unwrap().in_group("system:masters"));
        // A token that is present is checked, whatever the insecure port does.
        assert_eq!(authenticate(&store, "admin", true, Some("Bearer forged")).unwrap_err().code, 401);
        assert_eq!(authenticate(&store, "admin", true, Some("Basic YTpi")).unwrap_err().code, 401);
    }

    #[test]
    fn forbidden_is_worded_as_the_api_server_words_it() {
        let user = UserInfo { name: "system:serviceaccount:kube-system:agent".into(), ..UserInfo::default() };
        let e = forbidden(&user, &resource("patch", "pods", Some("status"), Some("default"), Some("p")));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: User \"system:serviceaccount:kube-system:agent\" cannot patch resource \"pods/status\" in API group \"\" in the namespace \"default\""
        );
        let e = forbidden(&user, &resource("list", "nodes", None, None, None));
        assert_eq!(
            e.message,
            "nodes is forbidden: User \"system:serviceaccount:kube-system:agent\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
    }
}
