//! A chained plugin's answer to `CNI_COMMAND=VERSION`, as the agent reads it when it writes
//! the conflist: any bytes give a list of versions or an error, never a panic, and every
//! version let through compares as `N.N.N`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_cni::version::{compare_dotted, parse_version_answer};

fuzz_target!(|data: &[u8]| {
    match parse_version_answer(data) {
        Ok(versions) => {
            for v in &versions {
                assert!(compare_dotted(v, v).is_some(), "{v:?} let through");
            }
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
