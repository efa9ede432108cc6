//! Which `skein.dev/pod-networks` values the master allocated. The master writes, with each
//! value, `skein.dev/pod-networks-signature`: an HMAC-SHA256 over the pod's UID and the
//! value, keyed with the signing key of its Secret (`pki`). A value without a valid
//! signature was written by someone else — a pod author, a compromised agent — and is
//! ignored (and reported): it cannot give a pod another pod's address, and copying a signed
//! value onto another pod does not work either, because the UID is signed too.
//!
//! Pods created before the signing key existed (an upgrade from a release without
//! signatures) carry unsigned values the master wrote then; those are trusted. The pod's
//! `creationTimestamp` is set by the API server, so it cannot be back-dated by its author.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use ring::hmac;
use skein_netmodel::annotations::POD_NETWORKS;

/// The annotation holding the master's signature of `skein.dev/pod-networks`.
pub const POD_NETWORKS_SIGNATURE: &str = "skein.dev/pod-networks-signature";

const VERSION: &str = "v1:";

/// What the master makes of a pod's `skein.dev/pod-networks` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No value.
    Absent,
    /// Signed by this cluster's master.
    Signed,
    /// Unsigned, on a pod older than the signing key: written before signatures existed.
    Legacy,
    /// Not the master's: ignored.
    Forged(String),
}

/// Signs and checks pod-networks values.
#[derive(Clone)]
pub struct AnnotationSigner {
    key: hmac::Key,
    trusted_before: Option<Time>,
}

impl std::fmt::Debug for AnnotationSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnotationSigner").field("trusted_before", &self.trusted_before).finish_non_exhaustive()
    }
}

fn message(uid: &str, value: &str) -> Vec<u8> {
    // Length-prefixed, so that no (uid, value) pair can be shifted into another.
    let mut m = Vec::with_capacity(uid.len() + value.len() + 40);
    m.extend_from_slice(POD_NETWORKS.as_bytes());
    m.push(0);
    m.extend_from_slice(&(uid.len() as u64).to_be_bytes());
    m.extend_from_slice(uid.as_bytes());
    m.extend_from_slice(value.as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl AnnotationSigner {
    /// A signer with `key`; unsigned values on pods created before `trusted_before` are
    /// accepted (`None`: none are).
    pub fn new(key: &[u8], trusted_before: Option<Time>) -> AnnotationSigner {
        AnnotationSigner { key: hmac::Key::new(hmac::HMAC_SHA256, key), trusted_before }
    }

    /// The signature of `value` on the pod with `uid`.
    pub fn sign(&self, uid: &str, value: &str) -> String {
        format!("{VERSION}{}", hex(hmac::sign(&self.key, &message(uid, value)).as_ref()))
    }

    /// Whether `signature` is this master's for `value` on the pod with `uid`.
    pub fn verify(&self, uid: &str, value: &str, signature: &str) -> bool {
        let Some(tag) = signature.strip_prefix(VERSION).and_then(unhex) else { return false };
        hmac::verify(&self.key, &message(uid, value), &tag).is_ok()
    }

    /// The verdict on `pod`'s pod-networks value.
    pub fn check(&self, pod: &Pod) -> Verdict {
        let annotations = pod.metadata.annotations.as_ref();
        let Some(value) = annotations.and_then(|a| a.get(POD_NETWORKS)) else { return Verdict::Absent };
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        match annotations.and_then(|a| a.get(POD_NETWORKS_SIGNATURE)) {
            Some(signature) if self.verify(uid, value, signature) => Verdict::Signed,
            Some(_) => Verdict::Forged(format!(
                "{POD_NETWORKS} was not allocated by the master ({POD_NETWORKS_SIGNATURE} does not match this pod and value); it is ignored"
            )),
            None => match (&pod.metadata.creation_timestamp, &self.trusted_before) {
                (Some(created), Some(before)) if created.0 < before.0 => Verdict::Legacy,
                _ => Verdict::Forged(format!(
                    "{POD_NETWORKS} was not allocated by the master (no {POD_NETWORKS_SIGNATURE}); it is ignored"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn pod(uid: &str, value: Option<&str>, signature: Option<&str>, created: i64) -> Pod {
        let mut annotations = BTreeMap::new();
        if let Some(v) = value {
            annotations.insert(POD_NETWORKS.to_owned(), v.to_owned());
        }
        if let Some(s) = signature {
            annotations.insert(POD_NETWORKS_SIGNATURE.to_owned(), s.to_owned());
        }
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.to_owned()),
                annotations: Some(annotations),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn only_the_masters_signature_for_this_pod_and_value_counts() {
        let key_created = Some(Time(Timestamp::from_second(1_000).unwrap()));
        let signer = AnnotationSigner::new(&[7; 32], key_created.clone());
        let value = r#"{"default":{"ip_addresses":["10.244.1.5/24"]}}"#;
        let sig = signer.sign("uid-a", value);
        assert_eq!(signer.check(&pod("uid-a", Some(value), Some(&sig), 2_000)), Verdict::Signed);
        assert_eq!(signer.check(&pod("uid-a", None, None, 2_000)), Verdict::Absent);
        // Copied to another pod, another value, another key, garbage: forged.
        assert!(matches!(signer.check(&pod("uid-b", Some(value), Some(&sig), 2_000)), Verdict::Forged(_)));
        let other = value.replace(".5/", ".6/");
        assert!(matches!(signer.check(&pod("uid-a", Some(&other), Some(&sig), 2_000)), Verdict::Forged(_)));
        let foreign = AnnotationSigner::new(&[8; 32], key_created).sign("uid-a", value);
        assert!(matches!(signer.check(&pod("uid-a", Some(value), Some(&foreign), 2_000)), Verdict::Forged(_)));
        for junk in ["", "v1:", "v1:zz", "v2:00", "v1:0"] {
            assert!(
                matches!(signer.check(&pod("uid-a", Some(value), Some(junk), 2_000)), Verdict::Forged(_)),
                "{junk}"
            );
        }
        // Unsigned: trusted only on pods older than the key.
        assert_eq!(signer.check(&pod("uid-a", Some(value), None, 999)), Verdict::Legacy);
        assert!(matches!(signer.check(&pod("uid-a", Some(value), None, 1_000)), Verdict::Forged(_)));
        assert!(matches!(
            AnnotationSigner::new(&[7; 32], None).check(&pod("u", Some(value), None, 1)),
            Verdict::Forged(_)
        ));
    }
}
