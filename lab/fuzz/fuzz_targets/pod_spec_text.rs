//! Text from pod specs and device plugins that the kubelet stand-in interprets — `$(VAR)`
//! expansion, image references, extended-resource quantities, rsh-style agent arguments —
//! returns a value or an error for any input, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_lab::devices::device_count;
use skein_lab::podspec::{expand, repository};
use skein_lab::remote_shell::parse_agent_args;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let expanded = expand(&text, &|name| (name.len() % 2 == 0).then(|| name.to_uppercase()));
    // Without variables to replace, only `$$` shrinks.
    let plain = expand(&text, &|_| None);
    assert!(plain.len() <= text.len());
    let _ = expanded;
    let _ = repository(&text);
    let _ = device_count(&text);
    let args: Vec<String> = text.split(' ').map(str::to_string).collect();
    if let Ok((host, command)) = parse_agent_args(&args) {
        assert!(!host.is_empty() || args.iter().any(String::is_empty));
        assert!(!command.is_empty() || args.len() > 1);
    }
});
