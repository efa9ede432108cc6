//! Any ValidatingAdmissionPolicy text — match conditions, validations and message
//! expressions in CEL, a variable, a failure policy — judged on a Node update: admission
//! never panics and always answers (allowed, or denied with a Status code of 401, 403, 413
//! or 422), whatever the CEL library makes of the expressions (a panic inside it is an
//! evaluation error, judged by the failure policy). Input layout: up to four expressions
//! separated by newlines (variable, match condition, validation, message), then a byte
//! choosing the failure policy and the validation's reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use skein_kube_fake::Kind;
use skein_kube_fake::access::UserInfo;
use skein_kube_fake::admission::{Request, admit};

fuzz_target!(|data: &[u8]| {
    // A panic the admission code catches (inside the CEL library) is not a crash; one it
    // does not catch still unwinds to the harness, which reports it.
    std::panic::set_hook(Box::new(|_| {}));
    let Some((&choice, text)) = data.split_last() else { return };
    let text = String::from_utf8_lossy(text);
    let mut parts = text.split('\n');
    let mut next = || parts.next().unwrap_or("true").to_owned();
    let (variable, condition, validation, message) = (next(), next(), next(), next());
    let failure = if choice & 1 == 0 { "Fail" } else { "Ignore" };
    let reason =
        ["Forbidden", "Invalid", "Unauthorized", "RequestEntityTooLarge", "Other"][usize::from(choice >> 1) % 5];
    let policy = json!({"metadata": {"name": "p"}, "spec": {
        "failurePolicy": failure,
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]}]},
        "variables": [{"name": "v", "expression": variable}],
        "matchConditions": [{"name": "c", "expression": condition}],
        "validations": [{"expression": validation, "messageExpression": message, "reason": reason}],
    }});
    let binding = json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Deny"]}});
    let old = json!({"metadata": {"name": "n1", "annotations": {"a": "b"}, "labels": {"x": "y"}}, "spec": {}});
    let new = json!({"metadata": {"name": "n1", "annotations": {"a": "c"}, "labels": {"x": "y"}}, "spec": {}});
    let mut extra = serde_json::Map::new();
    extra.insert("authentication.kubernetes.io/node-name".into(), json!(["n1"]));
    let user = UserInfo { name: "system:serviceaccount:skein-system:skein-agent".into(), groups: vec![], extra };
    let request = Request {
        operation: "UPDATE",
        kind: Kind::Node,
        subresource: None,
        namespace: None,
        name: "n1",
        object: &new,
        old_object: Some(&old),
        user: &user,
    };
    if let Err(error) = admit(&[policy], &[binding], &request) {
        assert!(matches!(error.code, 401 | 403 | 413 | 422), "denied with {}", error.code);
        assert!(
            error.message.contains("ValidatingAdmissionPolicy 'p' with binding 'b' denied request"),
            "{}",
            error.message
        );
    }
});
