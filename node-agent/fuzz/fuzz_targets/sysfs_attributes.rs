//! Every sysfs attribute parser on arbitrary text: a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_agent::deviceplugin::config::parse_pci_id_selector;
use skein_agent::deviceplugin::readiness::parse_trust;
use skein_agent::deviceplugin::sysfs::{
    parse_enabled_flag, parse_link_layer, parse_link_layer_name, parse_node_guid, parse_numa_node, parse_pci_id,
    parse_port_state,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(guid) = parse_node_guid(&text) {
        // Four groups of four hex digits round-trip.
        let formatted = format!(
            "{:04x}:{:04x}:{:04x}:{:04x}",
            guid >> 48,
            (guid >> 32) & 0xffff,
            (guid >> 16) & 0xffff,
            guid & 0xffff
        );
        assert_eq!(parse_node_guid(&formatted).ok(), Some(guid));
    }
    let _ = parse_numa_node(&text);
    let _ = parse_pci_id(&text);
    let _ = parse_port_state(&text);
    let _ = parse_link_layer(&text);
    let _ = parse_link_layer_name(&text);
    let _ = parse_enabled_flag(&text);
    let _ = parse_trust(&text);
    let _ = parse_pci_id_selector(&text);
});
