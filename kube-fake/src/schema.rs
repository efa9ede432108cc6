//! Field validation, the `fieldValidation` query parameter (`Strict`, `Warn`, `Ignore`): what
//! `kubectl apply` relies on instead of validating on the client once the OpenAPI document
//! says the server takes the parameter.
//!
//! Unknown fields are found for real: the object is decoded into its k8s-openapi type and
//! encoded back, and every field of the request that did not survive the round trip is
//! unknown (k8s-openapi ignores fields it does not know, as Go's decoder does). Duplicate
//! fields are found while parsing the body. Paths are worded as the API server words them
//! (`spec.template.spec.containers[0].foo`).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::resource::Kind;

/// A kind's schema as field validation sees it: decode into the k8s-openapi type, encode back.
pub(crate) type RoundTrip = fn(&Value) -> Result<Value, DecodeError>;

/// A value that does not decode into its k8s-openapi type (a type error, not an unknown field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// Dotted path of the offending field (`.` for the object itself).
    pub(crate) path: String,
    /// What the decoder said.
    pub(crate) message: String,
}

/// Decodes `value` as `T` and encodes it back.
pub(crate) fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, DecodeError> {
    let typed: T = serde_path_to_error::deserialize(value)
        .map_err(|e| DecodeError { path: e.path().to_string(), message: e.inner().to_string() })?;
    serde_json::to_value(&typed).map_err(|e| DecodeError { path: ".".into(), message: e.to_string() })
}

/// What a request body is checked against: the kind named in messages and its round trip.
#[derive(Clone, Copy)]
pub(crate) struct Schema {
    pub(crate) kind: &'static str,
    pub(crate) version: &'static str,
    pub(crate) round_trip: RoundTrip,
}

impl Schema {
    /// The schema of a served kind.
    pub(crate) fn of(kind: Kind) -> Schema {
        Schema { kind: kind.kind_name(), version: kind.version(), round_trip: kind.spec().schema }
    }

    /// `autoscaling/v1` Scale, the body of `/scale` writes.
    pub(crate) const SCALE: Schema =
        Schema { kind: "Scale", version: "v1", round_trip: round_trip::<k8s_openapi::api::autoscaling::v1::Scale> };
}

/// How the server treats unknown and duplicate fields in a write (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently; the last of duplicate fields wins.
    Ignore,
    /// Drop unknown fields and answer a `Warning` header for each unknown or duplicate field.
    Warn,
    /// Reject the write (400) naming every unknown and duplicate field.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter's value, as the API server spells it.
    pub fn parse(raw: &str) -> Result<FieldValidation, ApiError> {
        match raw {
            "Ignore" => Ok(FieldValidation::Ignore),
            "Warn" => Ok(FieldValidation::Warn),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

type FieldPath = Vec<Segment>;

/// `spec.containers[0].name`, as the API server prints paths.
fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Builds a `Value` while parsing and records every key that appears twice in one object
/// (the last one wins, as with Go's decoder).
struct Tracked<'a> {
    path: FieldPath,
    duplicates: &'a RefCell<Vec<FieldPath>>,
}

impl Tracked<'_> {
    fn child(&self, segment: Segment) -> Tracked<'_> {
        let mut path = self.path.clone();
        path.push(segment);
        Tracked { path, duplicates: self.duplicates }
    }
}

impl<'de> DeserializeSeed<'de> for Tracked<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tracked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(Segment::Index(items.len())))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.child(Segment::Key(key.clone())))?;
            if object.insert(key.clone(), value).is_some() {
                let mut path = self.path.clone();
                path.push(Segment::Key(key));
                self.duplicates.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(object))
    }
}

/// A parsed request body and the paths of the fields it names twice.
pub(crate) struct ParsedBody {
    pub(crate) value: Value,
    duplicates: Vec<FieldPath>,
}

/// Parses a JSON body, recording duplicate fields. `what` names the body in the error.
pub(crate) fn parse_body(body: &[u8], what: &str) -> Result<ParsedBody, ApiError> {
    let duplicates = RefCell::new(Vec::new());
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = Tracked { path: Vec::new(), duplicates: &duplicates }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| ApiError::bad_request(format!("cannot decode the {what} as JSON: {e}")))?;
    Ok(ParsedBody { value, duplicates: duplicates.into_inner() })
}

/// The duplicate fields of a parsed body, carried apart from the value while a patch is
/// applied.
pub(crate) struct Duplicates(Vec<FieldPath>);

impl ParsedBody {
    /// A body known to have no duplicate fields (e.g. one already decoded elsewhere).
    pub(crate) fn without_duplicates(value: Value) -> ParsedBody {
        ParsedBody { value, duplicates: Vec::new() }
    }

    /// The value and the duplicates, apart.
    pub(crate) fn into_parts(self) -> (Value, Duplicates) {
        (self.value, Duplicates(self.duplicates))
    }

    /// A (patched) value with the duplicates its request body had.
    pub(crate) fn from_parts(value: Value, duplicates: Duplicates) -> ParsedBody {
        ParsedBody { value, duplicates: duplicates.0 }
    }
}

/// A checked object: unknown fields dropped (unless the write was rejected), and the warnings
/// to answer with (`Warn`).
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) object: Value,
    pub(crate) warnings: Vec<String>,
}

/// Paths present in `input` that did not survive the round trip into `known`. `null` values
/// are skipped: a known optional field set to null does not survive either.
fn unknown_paths(input: &Value, known: &Value, path: &mut FieldPath, out: &mut Vec<FieldPath>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                if value.is_null() {
                    continue;
                }
                path.push(Segment::Key(key.clone()));
                match known.get(key) {
                    Some(inner) => unknown_paths(value, inner, path, out),
                    None => out.push(path.clone()),
                }
                path.pop();
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (index, (value, inner)) in input.iter().zip(known).enumerate() {
                path.push(Segment::Index(index));
                unknown_paths(value, inner, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn lookup<'a>(value: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(value, |current, segment| match (segment, current) {
        (Segment::Key(key), Value::Object(map)) => map.get(key),
        (Segment::Index(index), Value::Array(items)) => items.get(*index),
        _ => None,
    })
}

fn remove(value: &mut Value, path: &[Segment]) {
    let Some((Segment::Key(last), parent)) = path.split_last() else { return };
    let mut current = value;
    for segment in parent {
        current = match (segment, current) {
            (Segment::Key(key), Value::Object(map)) => match map.get_mut(key) {
                Some(next) => next,
                None => return,
            },
            (Segment::Index(index), Value::Array(items)) => match items.get_mut(*index) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    if let Value::Object(map) = current {
        map.remove(last);
    }
}

/// Checks `body` against `schema` under `directive`. A value that does not decode into the
/// type is a 400 whatever the directive, as on the API server. `existing` is the stored object
/// for a patch: its own unknown fields (written without validation) are not blamed on the
/// patch.
pub(crate) fn check(
    schema: Schema,
    body: ParsedBody,
    directive: FieldValidation,
    existing: Option<&Value>,
) -> Result<Checked, ApiError> {
    let ParsedBody { value: mut object, duplicates } = body;
    let known = (schema.round_trip)(&object).map_err(|e| {
        let at = if e.path == "." { String::new() } else { format!(" {}:", e.path) };
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: json: cannot decode{at} {message}",
            kind = schema.kind,
            version = schema.version,
            message = e.message
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_paths(&object, &known, &mut Vec::new(), &mut unknown);
    let blamed: Vec<&FieldPath> =
        unknown.iter().filter(|path| existing.is_none_or(|old| lookup(old, path) != lookup(&object, path))).collect();
    let mut problems: Vec<String> =
        blamed.iter().map(|path| format!("unknown field {:?}", format_path(path))).collect();
    problems.extend(duplicates.iter().map(|path| format!("duplicate field {:?}", format_path(path))));
    if directive == FieldValidation::Strict && !problems.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            problems.join(", "),
            kind = schema.kind,
            version = schema.version,
        )));
    }
    for path in &unknown {
        remove(&mut object, path);
    }
    let warnings = if directive == FieldValidation::Warn { problems } else { Vec::new() };
    Ok(Checked { object, warnings })
}

/// Checks a request body for `kind` without a stored object: the public entry point the fuzz
/// target drives. Returns the object as it would be stored and the warnings.
pub fn validate_fields(kind: Kind, body: &[u8], directive: FieldValidation) -> Result<(Value, Vec<String>), ApiError> {
    let parsed = parse_body(body, kind.kind_name())?;
    let checked = check(Schema::of(kind), parsed, directive, None)?;
    Ok((checked.object, checked.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(extra: Value) -> Vec<u8> {
        let mut object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"anything": "goes"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "x", "ports": [{"containerPort": 80}]}]}
                }
            }
        });
        crate::patch::merge_patch(&mut object, &extra);
        serde_json::to_vec(&object).unwrap()
    }

    #[test]
    fn known_objects_pass_unchanged_under_every_directive() {
        for directive in [FieldValidation::Strict, FieldValidation::Warn, FieldValidation::Ignore] {
            let (object, warnings) = validate_fields(Kind::Deployment, &deployment(json!({})), directive).unwrap();
            assert!(warnings.is_empty());
            assert_eq!(object, serde_json::from_slice::<Value>(&deployment(json!({}))).unwrap());
        }
    }

    #[test]
    fn strict_names_every_unknown_field_by_its_path() {
        let body = deployment(json!({
            "spec": {"foo": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "x", "bogus": true, "ports": [{"containerPort": 80, "hostPot": 1}]}
            ]}}},
            "extra": {"a": 1}
        }));
        let error = validate_fields(Kind::Deployment, &body, FieldValidation::Strict).unwrap_err();
        assert_eq!((error.code, error.reason.as_str()), (400, "BadRequest"));
        assert!(
            error
                .message
                .starts_with("Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: "),
            "{}",
            error.message
        );
        for field in [
            "extra",
            "spec.foo",
            "spec.template.spec.containers[0].bogus",
            "spec.template.spec.containers[0].ports[0].hostPot",
        ] {
            assert!(error.message.contains(&format!("unknown field \"{field}\"")), "{field}: {}", error.message);
        }
    }

    #[test]
    fn warn_drops_unknown_fields_and_says_so_ignore_drops_silently() {
        let body = deployment(json!({"spec": {"foo": 1}}));
        let (object, warnings) = validate_fields(Kind::Deployment, &body, FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"spec.foo\""]);
        assert!(object["spec"].get("foo").is_none());
        assert_eq!(object["spec"]["replicas"], 2);
        let (object, warnings) = validate_fields(Kind::Deployment, &body, FieldValidation::Ignore).unwrap();
        assert!(warnings.is_empty());
        assert!(object["spec"].get("foo").is_none());
    }

    #[test]
    fn duplicates_are_found_in_the_raw_body() {
        let body = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","name":"b"},
            "spec":{"containers":[{"name":"c","image":"i","image":"j"}]}}"#;
        let error = validate_fields(Kind::Pod, body, FieldValidation::Strict).unwrap_err();
        assert!(error.message.contains("duplicate field \"metadata.name\""), "{}", error.message);
        assert!(error.message.contains("duplicate field \"spec.containers[0].image\""), "{}", error.message);
        let (object, warnings) = validate_fields(Kind::Pod, body, FieldValidation::Warn).unwrap();
        assert_eq!(object["metadata"]["name"], "b", "the last one wins");
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn type_errors_are_rejected_whatever_the_directive() {
        let body = deployment(json!({"spec": {"replicas": "three"}}));
        let error = validate_fields(Kind::Deployment, &body, FieldValidation::Ignore).unwrap_err();
        assert_eq!(error.code, 400);
        assert!(error.message.contains("spec.replicas"), "{}", error.message);
        for bad in [&b"{not json"[..], b"[]", b"{} trailing", b""] {
            assert_eq!(validate_fields(Kind::Pod, bad, FieldValidation::Strict).unwrap_err().code, 400);
        }
        assert_eq!(FieldValidation::parse("Loose").unwrap_err().code, 400);
    }

    #[test]
    fn nulls_and_free_form_maps_are_not_unknown() {
        let body = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","annotations":{"x.io/y":"z"}},
            "spec":{"selector":{"any":"thing"},"clusterIP":null,"ports":[{"port":80,"targetPort":"http"}]}}"#;
        let (_, warnings) = validate_fields(Kind::Service, body, FieldValidation::Warn).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn fields_already_stored_are_not_blamed_on_a_patch() {
        let stored = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "legacy": 1});
        let patched =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "legacy": 1, "new": 2});
        let checked = check(
            Schema::of(Kind::Namespace),
            ParsedBody::without_duplicates(patched),
            FieldValidation::Warn,
            Some(&stored),
        )
        .unwrap();
        assert_eq!(checked.warnings, ["unknown field \"new\""]);
        assert!(checked.object.get("legacy").is_none(), "unknown fields are dropped either way");
    }
}
