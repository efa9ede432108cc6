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

/// The label a Job's pods carry with the Job's uid (and the generated selector selects).
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label a Job's pods carry with the Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// `batch/v1` Job defaults (`k8s.io/kubernetes/pkg/apis/batch/v1/defaults.go`): completions
/// and parallelism 1 when both are unset, parallelism 1, `backoffLimit` 6,
/// `completionMode: NonIndexed`, `suspend: false`, `podReplacementPolicy:
/// TerminatingOrFailed`, the Job's labels from its template when it has none; and what the
/// Job strategy adds on create unless `manualSelector` is set: a selector on the Job's uid
/// and the matching labels on its template (`batch.kubernetes.io/controller-uid`,
/// `batch.kubernetes.io/job-name` and their legacy forms).
pub(crate) fn job(object: &mut Value) {
    let uid = object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let Some(root) = object.as_object_mut() else { return };
    let Some(spec) = ensure_object(root, "spec") else { return };
    if !spec.contains_key("completions") && !spec.contains_key("parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    spec.entry("parallelism").or_insert_with(|| json!(1));
    spec.entry("backoffLimit").or_insert_with(|| json!(6));
    spec.entry("completionMode").or_insert_with(|| json!("NonIndexed"));
    spec.entry("suspend").or_insert_with(|| json!(false));
    spec.entry("podReplacementPolicy").or_insert_with(|| json!("TerminatingOrFailed"));
    let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
    if !manual && !uid.is_empty() {
        spec.entry("selector").or_insert_with(|| json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}}));
        if let Some(template) = ensure_object(spec, "template")
            && let Some(metadata) = ensure_object(template, "metadata")
            && let Some(labels) = ensure_object(metadata, "labels")
        {
            for (key, value) in [
                (JOB_CONTROLLER_UID_LABEL, &uid),
                (JOB_NAME_LABEL, &name),
                ("controller-uid", &uid),
                ("job-name", &name),
            ] {
                labels.entry(key).or_insert_with(|| json!(value));
            }
        }
    }
    let template_labels = object.pointer("/spec/template/metadata/labels").cloned();
    if let (Some(labels), Some(metadata)) = (template_labels, object.get_mut("metadata").and_then(Value::as_object_mut))
        && metadata.get("labels").and_then(Value::as_object).is_none_or(Map::is_empty)
    {
        metadata.insert("labels".into(), labels);
    }
    if let Some(pod) = object_at(object, &["spec", "template", "spec"]) {
        pod_spec(pod);
    }
}

/// The checks of `ValidateJob` the lab's Job controller depends on: a pod restart policy of
/// `OnFailure` or `Never`, a completion count for Indexed Jobs, non-negative counts, a
/// positive deadline, a selector that selects the template (immutable, like the template).
pub(crate) fn validate_job(object: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    match object.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str) {
        Some("OnFailure" | "Never") => {}
        Some(other) => errors.push(format!(
            "spec.template.spec.restartPolicy: Unsupported value: \"{other}\": supported values: \"OnFailure\", \"Never\""
        )),
        None => errors.push(
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"".to_owned(),
        ),
    }
    let containers = object.pointer("/spec/template/spec/containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errors.push("spec.template.spec.containers: Required value".to_owned());
    }
    let mode = object.pointer("/spec/completionMode").and_then(Value::as_str).unwrap_or("NonIndexed");
    if !matches!(mode, "NonIndexed" | "Indexed") {
        errors.push(format!(
            "spec.completionMode: Unsupported value: \"{mode}\": supported values: \"NonIndexed\", \"Indexed\""
        ));
    }
    let completions = object.pointer("/spec/completions").filter(|v| !v.is_null());
    if mode == "Indexed" && completions.is_none() {
        errors.push("spec.completions: Required value: when completion mode is Indexed".to_owned());
    }
    for field in ["completions", "parallelism", "backoffLimit"] {
        if let Some(value) = object.pointer(&format!("/spec/{field}")).and_then(Value::as_i64)
            && value < 0
        {
            errors.push(format!("spec.{field}: Invalid value: {value}: must be greater than or equal to 0"));
        }
    }
    if let Some(deadline) = object.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64)
        && deadline <= 0
    {
        errors.push(format!("spec.activeDeadlineSeconds: Invalid value: {deadline}: must be greater than 0"));
    }
    if let Some(selector) = object.pointer("/spec/selector").filter(|s| s.is_object()) {
        let labels = string_map(object.pointer("/spec/template/metadata/labels"));
        if !selector_matches(selector, &labels) {
            errors.push(format!(
                "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
                serde_json::to_string(&labels).unwrap_or_default()
            ));
        }
    }
    if let Some(old) = old {
        for (pointer, field) in [("/spec/selector", "spec.selector"), ("/spec/template", "spec.template")] {
            if let (Some(previous), Some(current)) = (old.pointer(pointer), object.pointer(pointer))
                && previous != current
            {
                errors.push(format!("{field}: Invalid value: {current}: field is immutable"));
            }
        }
    }
    errors
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
    fn jobs_get_the_api_servers_defaults_and_a_generated_selector() {
        let mut object = json!({"metadata": {"name": "train", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}});
        job(&mut object);
        let spec = &object["spec"];
        assert_eq!((spec["completions"].clone(), spec["parallelism"].clone()), (json!(1), json!(1)));
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["selector"], json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: "u-1"}}));
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!((labels[JOB_NAME_LABEL].clone(), labels["controller-uid"].clone()), (json!("train"), json!("u-1")));
        assert_eq!(object["metadata"]["labels"], *labels, "the Job takes its template's labels");
        assert!(validate_job(&object, None).is_empty(), "{:?}", validate_job(&object, None));
        // Parallelism alone leaves completions unset (a work queue).
        let mut queue = json!({"spec": {"parallelism": 3}});
        job(&mut queue);
        assert!(queue["spec"].get("completions").is_none());
        // With manualSelector nothing is generated.
        let mut manual = json!({"metadata": {"uid": "u"}, "spec": {"manualSelector": true}});
        job(&mut manual);
        assert!(manual["spec"].get("selector").is_none());
    }

    #[test]
    fn job_validation_names_each_bad_field() {
        let bad = json!({"spec": {"completionMode": "Indexed", "parallelism": -1, "activeDeadlineSeconds": 0,
            "template": {"spec": {"restartPolicy": "Always", "containers": []}}}});
        let errors = validate_job(&bad, None);
        for expected in [
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\"",
            "spec.template.spec.containers: Required value",
            "spec.completions: Required value: when completion mode is Indexed",
            "spec.parallelism: Invalid value: -1",
            "spec.activeDeadlineSeconds: Invalid value: 0",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected} in {errors:?}");
        }
        let mut good = json!({"metadata": {"name": "j", "uid": "u"},
            "spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c"}]}}}});
        job(&mut good);
        let mut changed = good.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        assert!(validate_job(&changed, Some(&good)).iter().any(|e| e.starts_with("spec.template: Invalid value")));
        assert!(validate_job(&good, Some(&good)).is_empty());
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
