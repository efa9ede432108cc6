//! Any TokenRequest and TokenReview body: issuing and reviewing never panic; a request
//! either fails with an error or yields a token that a review for one of its audiences
//! authenticates, and a review of anything else is answered, never an error except for a
//! missing `spec.token`. Input layout: the TokenRequest body, a 0xff byte, the TokenReview
//! body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use skein_kube_fake::{Kind, Store, StoreOptions};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (request, review) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let store = Store::new(StoreOptions::default());
    let _ = store.insert(Kind::ServiceAccount, json!({"metadata": {"name": "a", "namespace": "default"}}));
    let _ = store.insert(Kind::Node, json!({"metadata": {"name": "n"}}));
    if let Ok(request) = serde_json::from_slice::<Value>(request)
        && let Ok(issued) = store.request_token("default", "a", &request)
    {
        let token = issued.pointer("/status/token").and_then(Value::as_str).expect("an issued token");
        let audiences = issued.pointer("/spec/audiences").cloned().unwrap_or(json!([]));
        let answer = store
            .review_token(&json!({"spec": {"token": token, "audiences": audiences}}))
            .expect("a review with a token is answered");
        assert_eq!(answer.pointer("/status/authenticated"), Some(&json!(true)), "{answer}");
    }
    if let Ok(review) = serde_json::from_slice::<Value>(review) {
        let has_token = review.pointer("/spec/token").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
        match store.review_token(&review) {
            Ok(answer) => assert!(answer.pointer("/status/authenticated").is_some()),
            Err(error) => assert!(!has_token, "a review with a token failed: {error}"),
        }
    }
});
