//! What the API server fills in and refuses for the kinds served, where no store state is
//! needed (Service allocations are in the store): the `status` a create starts from, defaults
//! applied on every write of the main resource, and the validation the lab's controllers rely
//! on (a Deployment's selector must select its own template).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// A fresh Pod's status, whatever the request said.
pub(crate) fn pod_status() -> Value {
    json!({"phase": "Pending"})
}

/// A fresh Service's status.
pub(crate) fn service_status() -> Value {
    json!({"loadBalancer": {}})
}

/// A fresh Namespace's status.
pub(crate) fn namespace_status() -> Value {
    json!({"phase": "Active"})
}

/// An empty status, as a fresh Deployment has until its controller writes one.
pub(crate) fn empty_status() -> Value {
    json!({})
}

fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut current = value;
    for key in path {
        current = current.as_object_mut()?.get_mut(*key)?;
    }
    current.as_object_mut()
}

fn ensure_object<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// Container ports default to TCP, in every container list of a pod spec.
fn pod_spec(spec: &mut Map<String, Value>) {
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else { continue };
        for container in containers {
            let Some(Value::Array(ports)) = container.get_mut("ports") else { continue };
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                port.entry("protocol").or_insert_with(|| json!("TCP"));
            }
        }
    }
}

/// Pod defaults.
pub(crate) fn pod(object: &mut Value) {
    if let Some(spec) = object_at(object, &["spec"]) {
        pod_spec(spec);
    }
}

/// Namespace defaults: the `kubernetes` finalizer.
pub(crate) fn namespace(object: &mut Value) {
    let Some(root) = object.as_object_mut() else { return };
    let Some(spec) = ensure_object(root, "spec") else { return };
    spec.entry("finalizers").or_insert_with(|| json!(["kubernetes"]));
}

/// `apps/v1` Deployment defaults (`k8s.io/kubernetes/pkg/apis/apps/v1/defaults.go`): one
/// replica, a 25%/25% rolling update, 10 old revisions kept, a 600 s progress deadline; and the
/// pod template's own defaults.
pub(crate) fn deployment(object: &mut Value) {
    let Some(root) = object.as_object_mut() else { return };
    let Some(spec) = ensure_object(root, "spec") else { return };
    spec.entry("replicas").or_insert_with(|| json!(1));
    spec.entry("revisionHistoryLimit").or_insert_with(|| json!(10));
    spec.entry("progressDeadlineSeconds").or_insert_with(|| json!(600));
    if let Some(strategy) = ensure_object(spec, "strategy") {
        let kind = strategy.entry("type").or_insert_with(|| json!("RollingUpdate"));
        if kind == "RollingUpdate"
            && let Some(rolling) = ensure_object(strategy, "rollingUpdate")
        {
            rolling.entry("maxUnavailable").or_insert_with(|| json!("25%"));
            rolling.entry("maxSurge").or_insert_with(|| json!("25%"));
        }
    }
    if let Some(pod) = object_at(object, &["spec", "template", "spec"]) {
        pod_spec(pod);
    }
}

/// A label selector's `matchLabels` and `matchExpressions` evaluated against `labels`.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(key, value)| value.as_str().is_some_and(|v| labels.get(key).is_some_and(|l| l == v)));
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    let expressions_ok = expressions.into_iter().flatten().all(|expression| {
        let key = expression.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = expression
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let present = labels.get(key);
        match expression.get("operator").and_then(Value::as_str) {
            Some("In") => present.is_some_and(|v| values.contains(&v.as_str())),
            Some("NotIn") => present.is_none_or(|v| !values.contains(&v.as_str())),
            Some("Exists") => present.is_some(),
            Some("DoesNotExist") => present.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

/// The checks of `ValidateDeployment` a controller depends on: a non-empty selector that
/// selects the template's labels, immutable after creation, at least one container, and
/// non-negative replicas.
pub(crate) fn validate_deployment(object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    let selector = object.pointer("/spec/selector").filter(|s| s.is_object());
    let empty = |s: &Value| {
        ["matchLabels", "matchExpressions"]
            .iter()
            .all(|k| s.get(*k).is_none_or(|v| v.is_null() || v == &json!({}) || v == &json!([])))
    };
    match selector {
        None => errors.push("spec.selector: Required value".to_owned()),
        Some(selector) if empty(selector) => {
            errors.push("spec.selector: Invalid value: \"null\": empty selector is invalid for deployment".to_owned())
        }
        Some(selector) => {
            let labels = string_map(object.pointer("/spec/template/metadata/labels"));
            if !selector_matches(selector, &labels) {
                errors.push(format!(
                    "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
                    serde_json::to_string(&labels).unwrap_or_default()
                ));
            }
            if let Some(previous) = old.and_then(|o| o.pointer("/spec/selector"))
                && previous != selector
            {
                errors.push(format!("spec.selector: Invalid value: {selector}: field is immutable"));
            }
        }
    }
    let containers = object.pointer("/spec/template/spec/containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errors.push("spec.template.spec.containers: Required value".to_owned());
    }
    if let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        errors.push(format!("spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_get_the_api_servers_defaults() {
        let mut object =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}}});
        deployment(&mut object);
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(object["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(object["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            object["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(object["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        // Given values stay; Recreate gets no rollingUpdate.
        let mut object = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}});
        deployment(&mut object);
        assert_eq!(object["spec"]["replicas"], 0);
        assert_eq!(object["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn deployment_selectors_must_select_the_template() {
        let good = json!({"spec": {
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            "template": {"metadata": {"labels": {"app": "web", "tier": "a"}}, "spec": {"containers": [{"name": "c"}]}}
        }});
        assert!(validate_deployment(&good, None).is_empty());
        assert!(validate_deployment(&good, Some(&good)).is_empty());
        let mut mismatched = good.clone();
        mismatched["spec"]["template"]["metadata"]["labels"]["tier"] = json!("c");
        let errors = validate_deployment(&mismatched, None);
        assert!(errors[0].contains("`selector` does not match template `labels`"), "{errors:?}");
        let mut changed = good.clone();
        changed["spec"]["selector"]["matchLabels"]["extra"] = json!("x");
        changed["spec"]["template"]["metadata"]["labels"]["extra"] = json!("x");
        assert!(validate_deployment(&changed, Some(&good))[0].ends_with("field is immutable"));
        let errors = validate_deployment(&json!({"spec": {"replicas": -1}}), None);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("spec.selector: Required value"));
    }
}
