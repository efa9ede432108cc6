//! Any body sent as a protobuf SelfSubjectAccessReview (`kubectl auth can-i`): decoding
//! never panics; what decodes is a review whose spec holds only strings, and the
//! attributes the server takes from it are either read or refused with a 422.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_kube_fake::access::review_attributes;
use skein_kube_fake::protobuf::decode_self_subject_access_review;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = decode_self_subject_access_review(data) else { return };
    for part in ["resourceAttributes", "nonResourceAttributes"] {
        if let Some(attributes) = review["spec"].get(part) {
            let fields = attributes.as_object().expect("attributes decode to an object");
            assert!(fields.values().all(|v| v.is_string()), "{review}");
        }
    }
    if let Err(error) = review_attributes(&review) {
        assert_eq!(error.code, 422, "{}", error.message);
    }
});
