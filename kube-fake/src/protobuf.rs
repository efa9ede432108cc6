//! The little of Kubernetes' protobuf encoding the fake reads: a SelfSubjectAccessReview
//! sent as `application/vnd.kubernetes.protobuf`, as kubectl's typed client sends it
//! (`kubectl auth can-i`) — the `k8s\0` envelope (`runtime.Unknown`: type meta, raw bytes),
//! then the review's spec (`resourceAttributes` or `nonResourceAttributes`). Everything
//! else the fake serves is JSON or YAML.

use serde_json::{Map, Value, json};

/// The envelope's prefix.
const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: its number and, for a length-delimited field, its bytes.
struct Field<'a> {
    number: u64,
    bytes: Option<&'a [u8]>,
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at).ok_or("a varint runs past the end")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// The fields of one message, in order.
fn fields(data: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let key = varint(data, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        let bytes = match wire {
            0 => {
                varint(data, &mut at)?;
                None
            }
            1 | 5 => {
                at = at
                    .checked_add(if wire == 1 { 8 } else { 4 })
                    .filter(|&end| end <= data.len())
                    .ok_or("a fixed-size field runs past the end")?;
                None
            }
            2 => {
                let len = usize::try_from(varint(data, &mut at)?).map_err(|_| "a length that does not fit")?;
                let end = at
                    .checked_add(len)
                    .filter(|&end| end <= data.len())
                    .ok_or("a length-delimited field runs past the end")?;
                let bytes = &data[at..end];
                at = end;
                Some(bytes)
            }
            other => return Err(format!("wire type {other} (field {number}) is not supported")),
        };
        out.push(Field { number, bytes });
    }
    Ok(out)
}

/// The last length-delimited field `number` of a message.
fn field<'a>(message: &[Field<'a>], number: u64) -> Option<&'a [u8]> {
    message.iter().rev().find(|f| f.number == number).and_then(|f| f.bytes)
}

/// The string fields of a message, by number, as a JSON object with the given names.
fn strings(message: &[u8], names: &[(u64, &str)]) -> Result<Value, String> {
    let message = fields(message)?;
    let mut out = Map::new();
    for &(number, name) in names {
        if let Some(bytes) = field(&message, number) {
            let text = std::str::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
            out.insert(name.to_owned(), Value::String(text.to_owned()));
        }
    }
    Ok(Value::Object(out))
}

/// A protobuf SelfSubjectAccessReview as the JSON object it stands for (its spec; metadata
/// and status are not read).
pub fn decode_self_subject_access_review(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(MAGIC).ok_or("the body does not start with the k8s protobuf envelope")?;
    let envelope = fields(envelope)?;
    let raw = field(&envelope, 2).ok_or("the envelope holds no object")?;
    let review = fields(raw)?;
    let spec = fields(field(&review, 2).unwrap_or_default())?;
    let mut out = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {}});
    if let Some(attributes) = field(&spec, 1) {
        out["spec"]["resourceAttributes"] = strings(
            attributes,
            &[
                (1, "namespace"),
                (2, "verb"),
                (3, "group"),
                (4, "version"),
                (5, "resource"),
                (6, "subresource"),
                (7, "name"),
            ],
        )?;
    }
    if let Some(attributes) = field(&spec, 2) {
        out["spec"]["nonResourceAttributes"] = strings(attributes, &[(1, "path"), (2, "verb")])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delimited(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2, u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_review_as_kubectl_sends_it_decodes_to_its_spec() {
        let attributes = [delimited(2, b"patch"), delimited(5, b"nodes"), delimited(7, b"n1")].concat();
        let spec = delimited(1, &attributes);
        let review = [delimited(1, b""), delimited(2, &spec)].concat();
        let type_meta = [delimited(1, b"authorization.k8s.io/v1"), delimited(2, b"SelfSubjectAccessReview")].concat();
        let body = [MAGIC.to_vec(), delimited(1, &type_meta), delimited(2, &review)].concat();
        let decoded = decode_self_subject_access_review(&body).unwrap();
        assert_eq!(decoded["spec"]["resourceAttributes"], json!({"verb": "patch", "resource": "nodes", "name": "n1"}));
        let non_resource = [
            MAGIC.to_vec(),
            delimited(2, &delimited(2, &delimited(2, &[delimited(1, b"/metrics"), delimited(2, b"get")].concat()))),
        ]
        .concat();
        let decoded = decode_self_subject_access_review(&non_resource).unwrap();
        assert_eq!(decoded["spec"]["nonResourceAttributes"], json!({"path": "/metrics", "verb": "get"}));
    }

    #[test]
    fn truncated_or_foreign_bodies_are_errors() {
        assert!(decode_self_subject_access_review(b"{}").is_err());
        assert!(decode_self_subject_access_review(b"k8s\0\x12\x05ab").is_err(), "a length past the end");
        assert!(decode_self_subject_access_review(b"k8s\0\x0b").is_err(), "wire type 3");
        assert!(
            decode_self_subject_access_review(
                &[b"k8s\0".as_slice(), &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]]
                    .concat()
            )
            .is_err()
        );
    }
}
