//! Any text parses without panicking, as a flow file and as a packet, and everything that
//! parses formats to text that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::flowtext::{self, FlowFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = flowtext::parse_flow_file(text) {
        for flow in &file.flows {
            let line = flowtext::format_flow(flow);
            let again = flowtext::parse_flow_file(&line).map(|f| f.flows);
            assert_eq!(again, Ok(vec![flow.clone()]), "{line}");
        }
        // Groups, load balancers and tunnels too, all together.
        let rest = FlowFile { flows: Vec::new(), ..file };
        let text = flowtext::format_flow_file(&rest);
        assert_eq!(flowtext::parse_flow_file(&text), Ok(rest), "{text}");
    }
    if let Ok(key) = flowtext::parse_packet(text) {
        let line = flowtext::format_packet(&key);
        assert_eq!(flowtext::parse_packet(&line), Ok(key), "{line}");
    }
});
