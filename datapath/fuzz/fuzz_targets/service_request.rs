//! Any text parses as a datapath service request without panicking, and what parses formats
//! back to the same value: ports (`add-port`), flow updates (`update-flows`), conntrack
//! limits (`set-conntrack`), the answers a client reads (`hello`, reload reports).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::control::ReloadReport;
use skein_datapath::service::{self, Hello, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match service::parse_request(text) {
        Ok(Request::AddPort(spec)) => {
            let again = service::parse_port_spec(&service::format_port_spec(&spec));
            assert_eq!(again, Ok(spec));
        }
        Ok(Request::UpdateFlows { add, remove }) => {
            let body = service::format_update(&add, &remove);
            let again = service::parse_request(&format!("update-flows\n{body}"));
            assert_eq!(again, Ok(Request::UpdateFlows { add, remove }), "{body}");
        }
        Ok(Request::SetConntrack(limits)) => {
            let again = service::parse_request(&service::format_set_conntrack(&limits));
            assert_eq!(again, Ok(Request::SetConntrack(limits)));
        }
        _ => {}
    }
    let _ = service::parse_port_spec(text);
    let _ = Hello::parse(text);
    if let Ok(batch) = service::parse_audit_batch(text) {
        assert_eq!(service::parse_audit_batch(&service::format_audit_batch(&batch)), Ok(batch));
    }
    if let Ok(report) = ReloadReport::parse(text) {
        assert_eq!(ReloadReport::parse(&report.to_string()), Ok(report));
    }
});
