//! Any request body, for any kind, under any `fieldValidation` directive: checking it never
//! panics; a body that passes has no unknown fields left, so the object it yields passes
//! `Strict` too, unchanged. Input layout: one byte choosing the kind and the directive, then
//! the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_kube_fake::{FieldValidation, Kind, validate_fields};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let kind = Kind::ALL[usize::from(choice) % Kind::ALL.len()];
    let directive = match (choice as usize / Kind::ALL.len()) % 3 {
        0 => FieldValidation::Ignore,
        1 => FieldValidation::Warn,
        _ => FieldValidation::Strict,
    };
    let Ok((object, _warnings)) = validate_fields(kind, body, directive) else { return };
    let again = serde_json::to_vec(&object).expect("a JSON value serializes");
    match validate_fields(kind, &again, FieldValidation::Strict) {
        Ok((same, warnings)) => {
            assert!(warnings.is_empty());
            assert_eq!(same, object, "a checked object is its own fixed point");
        }
        Err(error) => panic!("a checked {kind} object fails Strict: {error}"),
    }
});
