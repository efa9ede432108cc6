//! The four PATCH content types kube-rs sends: JSON merge patch (RFC 7386), a documented
//! subset of strategic merge patch, JSON patch (RFC 6902) and server-side apply (as a
//! strategic merge of the applied configuration). Pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

use crate::resource::{Kind, ListStrategy};

/// A patch that could not be applied: `Malformed` is a 400 (bad document), `Failed` a 422
/// (a well-formed operation that does not apply to this object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PatchError {
    Malformed(String),
    Failed(String),
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes a key, anything else
/// (lists included) replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch, the subset documented in `docs/kube-fake.md`: merge-patch
/// semantics, plus keyed merging of the lists Kubernetes marks with a `patchMergeKey`
/// (containers by name, container ports by containerPort, service ports by port, conditions
/// by type, ...; the kind table says which, see [`Kind::list_strategy`]), union of
/// `metadata.finalizers`/`spec.podCIDRs`, and the directives
/// `$patch: replace|delete|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`;
/// `$setElementOrder/<field>` is accepted and ignored.
pub(crate) fn strategic_merge_patch(kind: Kind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed("a strategic merge patch must be a JSON object".into()));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    if let Value::Object(target) = target {
        smp_object(kind, target, patch, &mut path)?;
    }
    Ok(())
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn smp_object(
    kind: Kind,
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    match patch.get("$patch").map(|d| d.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => {
            if let Value::Object(replacement) = strip_directives(&Value::Object(patch.clone())) {
                *target = replacement;
            }
            return Ok(());
        }
        Some(Some("delete")) => {
            target.clear();
            return Ok(());
        }
        Some(other) => {
            return Err(PatchError::Malformed(format!("unknown $patch directive {other:?} at {:?}", path.join("."))));
        }
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(remove) = value else {
                return Err(PatchError::Malformed(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = target.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(PatchError::Malformed(format!("unknown strategic merge patch directive {key:?}")));
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => match inner.get("$patch").and_then(Value::as_str) {
                Some("delete") => {
                    target.remove(key);
                }
                _ => {
                    let slot = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    if let Value::Object(slot) = slot {
                        smp_object(kind, slot, inner, path)?;
                    }
                }
            },
            Value::Array(items) => {
                let merged = smp_list(kind, target.get(key), items, path)?;
                target.insert(key.clone(), merged);
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(retain) = retain else {
            return Err(PatchError::Malformed("$retainKeys must be a list of field names".into()));
        };
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn smp_list(kind: Kind, current: Option<&Value>, items: &[Value], path: &[String]) -> Result<Value, PatchError> {
    let dotted = path.join(".");
    let current: Vec<Value> = match current {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    // `[{"$patch": "replace"}, ...]` replaces the list with the other elements.
    let replace_marker = items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    match kind.list_strategy(&dotted) {
        _ if replace_marker => Ok(Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace"))
                .map(strip_directives)
                .collect(),
        )),
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(items.to_vec()))),
        ListStrategy::MergePrimitives => {
            let mut merged = current;
            for item in items {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            Ok(Value::Array(merged))
        }
        ListStrategy::MergeByKey(merge_key) => {
            let mut merged = current;
            for item in items {
                let Value::Object(element) = item else {
                    return Err(PatchError::Malformed(format!(
                        "{dotted}: elements must be objects with merge key {merge_key:?}"
                    )));
                };
                let Some(key_value) = element.get(merge_key) else {
                    return Err(PatchError::Malformed(format!(
                        "{dotted}: element has no merge key {merge_key:?}: {item}"
                    )));
                };
                let position = merged.iter().position(|m| m.get(merge_key) == Some(key_value));
                let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(at), true) => {
                        merged.remove(at);
                    }
                    (None, true) => {}
                    (Some(at), false) => {
                        let mut element_path = path.to_vec();
                        if let Value::Object(existing) = &mut merged[at] {
                            smp_object(kind, existing, element, &mut element_path)?;
                        } else {
                            merged[at] = strip_directives(item);
                        }
                    }
                    (None, false) => merged.push(strip_directives(item)),
                }
            }
            Ok(Value::Array(merged))
        }
    }
}

/// RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`), applied
/// atomically: on any failure the target is left unchanged.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError::Malformed("a JSON patch must be a list of operations".into()));
    };
    let mut work = target.clone();
    for (index, operation) in operations.iter().enumerate() {
        let field = |name: &str| -> Result<&str, PatchError> {
            operation.get(name).and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("operation {index}: missing string field {name:?} in {operation}"))
            })
        };
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| PatchError::Malformed(format!("operation {index}: missing \"value\" in {operation}")))
        };
        let op = field("op")?;
        let path =
            parse_pointer(field("path")?).map_err(|e| PatchError::Malformed(format!("operation {index}: {e}")))?;
        let failed = |why: String| PatchError::Failed(format!("operation {index} ({op}): {why}"));
        match op {
            "add" => add(&mut work, &path, value()?).map_err(failed)?,
            "remove" => {
                remove(&mut work, &path).map_err(failed)?;
            }
            "replace" => {
                remove(&mut work, &path).map_err(failed)?;
                add(&mut work, &path, value()?).map_err(failed)?;
            }
            "move" => {
                let from = parse_pointer(field("from")?)
                    .map_err(|e| PatchError::Malformed(format!("operation {index}: {e}")))?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(failed("cannot move a value into one of its own children".into()));
                }
                let moved = remove(&mut work, &from).map_err(failed)?;
                add(&mut work, &path, moved).map_err(failed)?;
            }
            "copy" => {
                let from = parse_pointer(field("from")?)
                    .map_err(|e| PatchError::Malformed(format!("operation {index}: {e}")))?;
                let copied =
                    lookup(&work, &from).cloned().ok_or_else(|| failed(format!("{} not found", join(&from))))?;
                add(&mut work, &path, copied).map_err(failed)?;
            }
            "test" => {
                let expected = value()?;
                let actual = lookup(&work, &path);
                if actual != Some(&expected) {
                    return Err(failed(format!(
                        "test failed at {}: expected {expected}, found {}",
                        join(&path),
                        actual.map_or_else(|| "nothing".to_owned(), Value::to_string)
                    )));
                }
            }
            other => return Err(PatchError::Malformed(format!("operation {index}: unknown op {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}

fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("JSON pointer {pointer:?} must start with '/'"));
    };
    Ok(rest.split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect())
}

fn join(path: &[String]) -> String {
    if path.is_empty() { "/".into() } else { path.iter().map(|p| format!("/{p}")).collect() }
}

fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = root;
    for part in path {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(array_index(part, items.len())?)?,
            _ => return None,
        };
    }
    Some(current)
}

fn array_index(part: &str, len: usize) -> Option<usize> {
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse::<usize>().ok().filter(|&i| i < len)
}

fn parent_mut<'a>(root: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut current = root;
    for (depth, part) in path.iter().enumerate() {
        current = match current {
            Value::Object(map) => map.get_mut(part),
            Value::Array(items) => {
                let len = items.len();
                array_index(part, len).and_then(move |i| items.get_mut(i))
            }
            _ => None,
        }
        .ok_or_else(|| format!("{} not found", join(&path[..=depth])))?;
    }
    Ok(current)
}

fn add(root: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent_path)) = path.split_last() else {
        *root = value;
        return Ok(());
    };
    match parent_mut(root, parent_path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
                return Ok(());
            }
            match last.parse::<usize>() {
                Ok(i) if i <= items.len() && !(last.len() > 1 && last.starts_with('0')) => {
                    items.insert(i, value);
                    Ok(())
                }
                _ => Err(format!("index {last:?} out of range at {}", join(path))),
            }
        }
        _ => Err(format!("{} is not an object or a list", join(parent_path))),
    }
}

fn remove(root: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(root, parent_path)? {
        Value::Object(map) => map.remove(last).ok_or_else(|| format!("{} not found", join(path))),
        Value::Array(items) => match array_index(last, items.len()) {
            Some(i) => Ok(items.remove(i)),
            None => Err(format!("index {last:?} out of range at {}", join(path))),
        },
        _ => Err(format!("{} is not an object or a list", join(parent_path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge_patch(&mut target, &json!({"a": [3]}));
        assert_eq!(target, json!({"a": [3]}));
        let mut target = json!({"a": "b"});
        merge_patch(&mut target, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(target, json!({"a": {"c": 1}}));
    }

    #[test]
    fn strategic_merges_containers_by_name_and_ports_by_container_port() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
            {"name": "b", "image": "b:1"}
        ], "tolerations": [{"key": "x"}]}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 81, "name": "alt"}]},
            {"name": "c", "image": "c:1"},
            {"name": "b", "$patch": "delete"}
        ], "tolerations": [{"key": "y"}]}});
        strategic_merge_patch(Kind::Pod, &mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:2", "ports": [{"containerPort": 80}, {"containerPort": 81, "name": "alt"}]},
                {"name": "c", "image": "c:1"}
            ], "tolerations": [{"key": "y"}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let mut obj = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}}});
        let patch = json!({"metadata": {
            "finalizers": ["b"],
            "labels": {"$patch": "replace", "z": "3"},
            "$setElementOrder/finalizers": ["a", "b"]
        }});
        strategic_merge_patch(Kind::Pod, &mut obj, &patch).unwrap();
        assert_eq!(obj, json!({"metadata": {"finalizers": ["a", "b"], "labels": {"z": "3"}}}));
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        strategic_merge_patch(Kind::Pod, &mut obj, &patch).unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["b"]));
        let bad = json!({"metadata": {"$patch": "explode"}});
        assert!(matches!(strategic_merge_patch(Kind::Pod, &mut obj, &bad), Err(PatchError::Malformed(_))));
        let bad = json!({"spec": {"containers": [{"image": "no-name"}]}});
        assert!(matches!(strategic_merge_patch(Kind::Pod, &mut obj, &bad), Err(PatchError::Malformed(_))));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"a": {"b": [1, 2]}, "x~/y": 1});
        let patch = json!([
            {"op": "add", "path": "/a/b/1", "value": 9},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/x~0~1y", "value": 2},
            {"op": "copy", "from": "/a/b", "path": "/c"},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "test", "path": "/d/1", "value": 9}
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, json!({"a": {"b": [9, 2, 3]}, "x~/y": 2, "d": [1, 9, 2, 3]}));
    }

    #[test]
    fn json_patch_failures_leave_target_unchanged() {
        let original = json!({"a": 1});
        let mut doc = original.clone();
        let patch = json!([{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 3}]);
        assert!(matches!(json_patch(&mut doc, &patch), Err(PatchError::Failed(_))));
        assert_eq!(doc, original);
        for bad in [
            json!({"op": "add"}),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"path": "/a"}]),
        ] {
            assert!(matches!(json_patch(&mut doc, &bad), Err(PatchError::Malformed(_))), "{bad}");
        }
        for bad in [json!([{"op": "remove", "path": "/zz"}]), json!([{"op": "add", "path": "/a/b/c", "value": 1}])] {
            assert!(matches!(json_patch(&mut doc, &bad), Err(PatchError::Failed(_))), "{bad}");
        }
    }
}
