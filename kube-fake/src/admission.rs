//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`), evaluated as the API
//! server evaluates it: for a create or update (of the main resource or a subresource) by a
//! request's user, every policy a binding with the `Deny` action names whose
//! `matchConstraints.resourceRules` match and whose `matchConditions` all hold has its
//! `validations` evaluated in CEL over `object`, `oldObject`, `request` and `variables`; the
//! first that is false denies the request with its message (or `messageExpression`) and
//! reason, worded as the API server words it. An expression that does not compile or
//! evaluate fails the request under `failurePolicy: Fail` (the default) and is skipped under
//! `Ignore`.
//!
//! Writes that come through [`crate::Store`]'s own methods (a test seeding state, the lab's
//! daemon) are not requests and are not admitted, as writes straight to etcd are not.

use cel_interpreter::{Context, Program, Value as CelValue};
use serde_json::{Value, json};

use crate::access::UserInfo;
use crate::error::{ApiError, resource_ref};
use crate::resource::Kind;

tokio::task_local! {
    /// The user of the request being served (set by the server around each request).
    pub(crate) static REQUEST_USER: UserInfo;
}

/// The user of the request being served, if a request is being served.
pub(crate) fn current_user() -> Option<UserInfo> {
    REQUEST_USER.try_with(Clone::clone).ok()
}

/// A write to admit.
pub struct Request<'a> {
    /// `CREATE` or `UPDATE`.
    pub operation: &'static str,
    /// The kind written.
    pub kind: Kind,
    /// The subresource written (`status`), if any.
    pub subresource: Option<&'a str>,
    /// The object's namespace (namespaced kinds).
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The object as it would be stored.
    pub object: &'a Value,
    /// The object as it is (updates).
    pub old_object: Option<&'a Value>,
    /// Who writes.
    pub user: &'a UserInfo,
}

/// Admits `request` under `policies` and `bindings` (ValidatingAdmissionPolicy and
/// ValidatingAdmissionPolicyBinding objects, as stored), or says why not. What the server
/// runs on every write a request makes; public for tests and the fuzz target.
pub fn admit(policies: &[Value], bindings: &[Value], request: &Request<'_>) -> Result<(), ApiError> {
    for binding in bindings {
        let denies = binding
            .pointer("/spec/validationActions")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "Deny"));
        let policy_name = binding.pointer("/spec/policyName").and_then(Value::as_str).unwrap_or_default();
        let Some(policy) =
            policies.iter().find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(policy_name))
        else {
            continue;
        };
        if !denies || !matches_rules(policy, request) {
            continue;
        }
        let binding_name = binding.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        evaluate(policy, policy_name, binding_name, request)?;
    }
    Ok(())
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

/// `spec.matchConstraints.resourceRules`: operation, group, version and resource (with its
/// subresource as `pods/status`).
fn matches_rules(policy: &Value, request: &Request<'_>) -> bool {
    let resource = match request.subresource {
        Some(sub) => format!("{}/{sub}", request.kind.plural()),
        None => request.kind.plural().to_owned(),
    };
    let rules = policy.pointer("/spec/matchConstraints/resourceRules").and_then(Value::as_array);
    rules.into_iter().flatten().any(|rule| {
        let has = |field: &str, want: &str| strings(rule.get(field)).any(|v| v == "*" || v == want);
        let resource_ok = strings(rule.get("resources")).any(|r| {
            r == "*"
                || r == resource
                || (request.subresource.is_some() && r == "*/*")
                || r == format!("{}/*", request.kind.plural())
        });
        has("operations", request.operation)
            && has("apiGroups", request.kind.group())
            && has("apiVersions", request.kind.version())
            && resource_ok
    })
}

/// The CEL variables of a request (`variables` added as they are computed).
fn context(request: &Request<'_>) -> Result<Context<'static>, String> {
    let mut context = Context::default();
    let null_or = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    let object = if request.operation == "DELETE" { Value::Null } else { request.object.clone() };
    let cel_request = json!({
        "operation": request.operation,
        "name": request.name,
        "namespace": request.namespace.unwrap_or_default(),
        "subResource": request.subresource.unwrap_or_default(),
        "kind": {"group": request.kind.group(), "version": request.kind.version(), "kind": request.kind.kind_name()},
        "resource": {"group": request.kind.group(), "version": request.kind.version(), "resource": request.kind.plural()},
        "userInfo": {
            "username": request.user.name,
            "groups": request.user.groups,
            "extra": request.user.extra,
        },
    });
    for (name, value) in [("object", object), ("oldObject", null_or(request.old_object)), ("request", cel_request)] {
        context.add_variable(name, value).map_err(|e| format!("variable {name}: {e}"))?;
    }
    context.add_variable("params", Value::Null).map_err(|e| format!("variable params: {e}"))?;
    Ok(context)
}

/// Compiles and evaluates one expression. A panic inside the CEL library (a policy's text is
/// user input) is an evaluation error, judged by the failure policy, not a dead request.
fn run(expression: &str, context: &Context<'_>) -> Result<CelValue, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let program = Program::compile(expression).map_err(|e| format!("compilation failed: {e}"))?;
        program.execute(context).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|_| Err("the CEL evaluator failed on this expression".to_owned()))
}

/// Evaluates one policy that matches: variables, match conditions, validations.
fn evaluate(policy: &Value, policy_name: &str, binding_name: &str, request: &Request<'_>) -> Result<(), ApiError> {
    let fail_closed = policy.pointer("/spec/failurePolicy").and_then(Value::as_str) != Some("Ignore");
    let denied = |code: u16, reason: &str, message: String| {
        ApiError::new(
            code,
            reason,
            format!(
                "{} \"{}\" is forbidden: ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {message}",
                resource_ref(request.kind),
                request.name
            ),
        )
    };
    let error = |expression: &str, why: String| -> Result<(), ApiError> {
        if fail_closed {
            Err(denied(403, "Forbidden", format!("expression '{expression}' resulted in error: {why}")))
        } else {
            Ok(())
        }
    };
    let mut context = match context(request) {
        Ok(c) => c,
        Err(why) => return error("(request)", why),
    };
    // spec.variables, in order, each able to use the ones before.
    let mut variables = serde_json::Map::new();
    for variable in policy.pointer("/spec/variables").and_then(Value::as_array).into_iter().flatten() {
        let name = variable.get("name").and_then(Value::as_str).unwrap_or_default();
        let expression = variable.get("expression").and_then(Value::as_str).unwrap_or_default();
        match run(expression, &context).and_then(|v| v.json().map_err(|e| e.to_string())) {
            Ok(value) => {
                variables.insert(name.to_owned(), value);
                if let Err(e) = context.add_variable("variables", Value::Object(variables.clone())) {
                    return error(expression, e.to_string());
                }
            }
            Err(why) => return error(expression, why),
        }
    }
    for condition in policy.pointer("/spec/matchConditions").and_then(Value::as_array).into_iter().flatten() {
        let expression = condition.get("expression").and_then(Value::as_str).unwrap_or_default();
        match run(expression, &context) {
            Ok(CelValue::Bool(true)) => {}
            Ok(CelValue::Bool(false)) => return Ok(()),
            Ok(other) => return error(expression, format!("expected a bool, got {other:?}")),
            Err(why) => return error(expression, why),
        }
    }
    for validation in policy.pointer("/spec/validations").and_then(Value::as_array).into_iter().flatten() {
        let expression = validation.get("expression").and_then(Value::as_str).unwrap_or_default();
        match run(expression, &context) {
            Ok(CelValue::Bool(true)) => {}
            Ok(CelValue::Bool(false)) => {
                let message = validation
                    .get("messageExpression")
                    .and_then(Value::as_str)
                    .and_then(|m| match run(m, &context) {
                        Ok(CelValue::String(s)) => Some(s.to_string()),
                        _ => None,
                    })
                    .or_else(|| validation.get("message").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| format!("failed expression: {expression}"));
                let (code, reason) = match validation.get("reason").and_then(Value::as_str) {
                    Some("Unauthorized") => (401, "Unauthorized"),
                    Some("Forbidden") => (403, "Forbidden"),
                    Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
                    _ => (422, "Invalid"),
                };
                return Err(denied(code, reason, message));
            }
            Ok(other) => return error(expression, format!("expected a bool, got {other:?}")),
            Err(why) => return error(expression, why),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's two policies, as rendered (`manifests/04-admission-policy.yaml`).
    fn chart() -> (Vec<Value>, Vec<Value>) {
        let text = include_str!("../../manifests/04-admission-policy.yaml");
        let documents: Vec<Value> = serde_saphyr::from_multiple(text).expect("the manifest parses");
        let of = |kind: &str| documents.iter().filter(|d| d["kind"] == kind).cloned().collect::<Vec<_>>();
        (of("ValidatingAdmissionPolicy"), of("ValidatingAdmissionPolicyBinding"))
    }

    fn agent(node: &str) -> UserInfo {
        let mut extra = serde_json::Map::new();
        extra.insert("authentication.kubernetes.io/node-name".into(), json!([node]));
        UserInfo {
            name: "system:serviceaccount:skein-system:skein-agent".into(),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
            extra,
        }
    }

    fn node(name: &str, annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": annotations}, "spec": {"podCIDR": "10.0.0.0/24"}})
    }

    fn update<'a>(kind: Kind, name: &'a str, object: &'a Value, old: &'a Value, user: &'a UserInfo) -> Request<'a> {
        Request {
            operation: "UPDATE",
            kind,
            subresource: None,
            namespace: None,
            name,
            object,
            old_object: Some(old),
            user,
        }
    }

    #[test]
    fn an_agent_may_change_only_its_own_nodes_chassis_annotation() {
        let (policies, bindings) = chart();
        assert_eq!((policies.len(), bindings.len()), (2, 2));
        let old = node("node1", json!({"other": "x"}));
        let own = node("node1", json!({"other": "x", "skein.dev/chassis": "{}"}));
        let user = agent("node1");
        admit(&policies, &bindings, &update(Kind::Node, "node1", &own, &old, &user))
            .expect("its own chassis annotation");

        let other_node = agent("node2");
        let e = admit(&policies, &bindings, &update(Kind::Node, "node1", &own, &old, &other_node)).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("ValidatingAdmissionPolicy 'skein-agent-own-node' with binding 'skein-agent-own-node' denied request: skein-agent may change only the Node it runs on, not node1"),
            "{}",
            e.message
        );
        let relabelled = node("node1", json!({"other": "changed", "skein.dev/chassis": "{}"}));
        let e = admit(&policies, &bindings, &update(Kind::Node, "node1", &relabelled, &old, &user)).unwrap_err();
        assert!(
            e.message.contains("may change only the skein.dev/chassis and skein.dev/rdma-readiness annotations"),
            "{}",
            e.message
        );
        let mut respec = own.clone();
        respec["spec"]["podCIDR"] = json!("10.9.0.0/24");
        let e = admit(&policies, &bindings, &update(Kind::Node, "node1", &respec, &old, &user)).unwrap_err();
        assert!(e.message.contains("may not change the labels or spec"), "{}", e.message);
        // Anyone else is not this policy's business.
        admit(&policies, &bindings, &update(Kind::Node, "node1", &respec, &old, &UserInfo::admin()))
            .expect("the admin");
    }

    fn pod_request<'a>(
        operation: &'static str,
        object: &'a Value,
        old: Option<&'a Value>,
        user: &'a UserInfo,
    ) -> Request<'a> {
        Request {
            operation,
            kind: Kind::Pod,
            subresource: old.map(|_| "status"),
            namespace: Some("default"),
            name: "p",
            object,
            old_object: old,
            user,
        }
    }

    #[test]
    fn only_the_master_writes_skein_pod_annotations() {
        let (policies, bindings) = chart();
        let pod = |annotations: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "annotations": annotations}});
        let old = pod(json!({"a": "b"}));
        let forged = pod(json!({"a": "b", "skein.dev/pod-networks": "{}"}));
        let user = agent("node1");
        let e = admit(&policies, &bindings, &pod_request("UPDATE", &forged, Some(&old), &user)).unwrap_err();
        assert!(
            e.message.contains("only skein-master may add, change or remove skein.dev/ annotations on Pods"),
            "{}",
            e.message
        );
        let master = UserInfo { name: "system:serviceaccount:skein-system:skein-master".into(), ..UserInfo::default() };
        admit(&policies, &bindings, &pod_request("UPDATE", &forged, Some(&old), &master)).expect("the master may");
        let other = pod(json!({"a": "c"}));
        admit(&policies, &bindings, &pod_request("UPDATE", &other, Some(&old), &user))
            .expect("other annotations are anyone's");
        // Creating a pod with a skein.dev/ annotation is refused to anyone but the master.
        assert!(admit(&policies, &bindings, &pod_request("CREATE", &forged, None, &UserInfo::admin())).is_err());
        admit(&policies, &bindings, &pod_request("CREATE", &old, None, &UserInfo::admin())).expect("a plain pod");
    }

    #[test]
    fn an_expression_that_fails_denies_under_fail_and_is_skipped_under_ignore() {
        let policy = |failure: &str| {
            json!({"metadata": {"name": "p"}, "spec": {"failurePolicy": failure,
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}]},
                "validations": [{"expression": "object.metadata.nosuchfield == 1"}]}})
        };
        let bindings =
            vec![json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Deny"]}})];
        let (object, user) = (node("n", json!({})), UserInfo::admin());
        let request = update(Kind::Node, "n", &object, &object, &user);
        assert!(admit(&[policy("Fail")], &bindings, &request).is_err());
        admit(&[policy("Ignore")], &bindings, &request).expect("ignored");
        // A binding that only audits or warns does not deny.
        let warn = vec![json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Warn"]}})];
        admit(&[policy("Fail")], &warn, &request).expect("not a Deny binding");
    }
}
