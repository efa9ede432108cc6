//! The device plugin configuration parser (JSON and YAML) on arbitrary text: it must
//! return a config or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_agent::deviceplugin::config::{Config, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Json, Format::Yaml] {
        if let Ok(config) = Config::parse(text, format) {
            // What validation let through must hold its promises.
            assert!(!config.resources.is_empty());
            for resource in &config.resources {
                assert!(resource.name.contains('/'));
                assert!(resource.shared_slots.is_none_or(|n| n >= 1));
            }
            assert!(config.roce.pfc_priorities.iter().all(|&p| p <= 7));
        }
    }
});
