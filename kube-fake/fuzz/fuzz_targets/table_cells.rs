//! Any stored object (kube-fake keeps whatever JSON a test wrote) prints as a table row for
//! every kind without panicking: a Table of a list never fails because of one odd object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_kube_fake::{Kind, table_cells};

fuzz_target!(|data: &[u8]| {
    let Ok(object) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for kind in Kind::ALL {
        let cells = table_cells(kind, &object);
        assert!(!cells.is_empty(), "{kind}: a row has cells");
    }
});
