//! The annotation contracts of `DESIGN.md` ("Contracts"): their Rust form, parsing (from
//! untrusted text: errors name the annotation, the field and the value, never a panic) and
//! formatting. The master writes `skein.dev/node-subnets` and `skein.dev/pod-networks`;
//! the agent writes `skein.dev/chassis`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::addr::{IpFamily, IpNet, MacAddr};

/// Node annotation holding the node's pod subnets.
pub const NODE_SUBNETS: &str = "skein.dev/node-subnets";
/// Node annotation written by the agent to register its chassis.
pub const CHASSIS: &str = "skein.dev/chassis";
/// Pod annotation holding the pod's addresses, written once by the master.
pub const POD_NETWORKS: &str = "skein.dev/pod-networks";
/// The name of the (only, for now) network in the annotations' maps.
pub const DEFAULT_NETWORK: &str = "default";
/// Longest annotation value quoted back in an error.
const QUOTE_MAX: usize = 200;

/// Why an annotation was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AnnotationError {
    /// The value is not valid JSON of the contract's shape.
    #[error("annotation {annotation}: field `{path}` in {value:?}: {message}")]
    Malformed {
        /// The annotation key.
        annotation: &'static str,
        /// Path of the offending field (`.` for the whole value).
        path: String,
        /// The value (truncated).
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The `default` network is missing.
    #[error("annotation {annotation}: no `default` network in {value:?}")]
    NoDefaultNetwork {
        /// The annotation key.
        annotation: &'static str,
        /// The value (truncated).
        value: String,
    },
    /// A pod network lists no IP address.
    #[error("annotation {POD_NETWORKS}: `ip_addresses` is empty")]
    NoAddresses,
    /// Two addresses of one family where one per family is allowed.
    #[error("annotation {annotation}: two {family} entries ({first} and {second})")]
    DuplicateFamily {
        /// The annotation key.
        annotation: &'static str,
        /// The family.
        family: IpFamily,
        /// First entry.
        first: IpNet,
        /// Second entry.
        second: IpNet,
    },
    /// The MAC is not the one derived from the address.
    #[error("annotation {POD_NETWORKS}: `mac_address` {mac} is not {expected}, the MAC derived from {ip}")]
    MacMismatch {
        /// The MAC given.
        mac: MacAddr,
        /// The MAC derived from the first address.
        expected: MacAddr,
        /// The address it was derived from.
        ip: IpAddr,
    },
}

fn quote(text: &str) -> String {
    if text.len() <= QUOTE_MAX {
        return text.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn parse_json<T: for<'de> Deserialize<'de>>(annotation: &'static str, text: &str) -> Result<T, AnnotationError> {
    let malformed =
        |path: String, message: String| AnnotationError::Malformed { annotation, path, value: quote(text), message };
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| malformed(e.path().to_string(), e.into_inner().to_string()))?;
    de.end().map_err(|e| malformed(".".into(), e.to_string()))?;
    Ok(value)
}

fn check_one_per_family(annotation: &'static str, nets: &[IpNet]) -> Result<(), AnnotationError> {
    for (i, a) in nets.iter().enumerate() {
        if let Some(b) = nets[..i].iter().find(|b| b.family() == a.family()) {
            return Err(AnnotationError::DuplicateFamily { annotation, family: a.family(), first: *b, second: *a });
        }
    }
    Ok(())
}

/// Parses `skein.dev/node-subnets` (`{"default":["10.244.1.0/24"]}`): the default network's
/// subnets, one per family.
pub fn parse_node_subnets(text: &str) -> Result<Vec<IpNet>, AnnotationError> {
    let mut map: BTreeMap<String, Vec<IpNet>> = parse_json(NODE_SUBNETS, text)?;
    let nets = map
        .remove(DEFAULT_NETWORK)
        .ok_or_else(|| AnnotationError::NoDefaultNetwork { annotation: NODE_SUBNETS, value: quote(text) })?;
    check_one_per_family(NODE_SUBNETS, &nets)?;
    Ok(nets)
}

/// Formats `skein.dev/node-subnets`.
pub fn format_node_subnets(subnets: &[IpNet]) -> String {
    let map: BTreeMap<&str, &[IpNet]> = [(DEFAULT_NETWORK, subnets)].into_iter().collect();
    // Serializing strings and string lists into a String cannot fail.
    serde_json::to_string(&map).unwrap_or_default()
}

/// Tunnel encapsulation of a chassis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Encap {
    /// Geneve, UDP 6081, OVN's option format (`docs/geneve.md`).
    #[serde(rename = "geneve")]
    Geneve,
}

/// `skein.dev/chassis`: `{"id":"<uuid>","tunnel-ip":"192.0.2.11","encap":"geneve"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChassisAnnotation {
    /// The chassis id (a UUID the agent keeps across restarts).
    pub id: String,
    /// Outer address of tunnels to this chassis.
    #[serde(rename = "tunnel-ip")]
    pub tunnel_ip: IpAddr,
    /// Encapsulation.
    pub encap: Encap,
}

/// Parses `skein.dev/chassis`.
pub fn parse_chassis(text: &str) -> Result<ChassisAnnotation, AnnotationError> {
    let chassis: ChassisAnnotation = parse_json(CHASSIS, text)?;
    if chassis.id.is_empty() {
        return Err(AnnotationError::Malformed {
            annotation: CHASSIS,
            path: "id".into(),
            value: quote(text),
            message: "empty chassis id".into(),
        });
    }
    Ok(chassis)
}

/// Formats `skein.dev/chassis`.
pub fn format_chassis(chassis: &ChassisAnnotation) -> String {
    // Strings and an address: serialization cannot fail.
    serde_json::to_string(chassis).unwrap_or_default()
}

/// A route handed to the pod's interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRoute {
    /// Destination prefix.
    pub dest: IpNet,
    /// Next hop.
    #[serde(rename = "nextHop")]
    pub next_hop: IpAddr,
}

/// The default network of `skein.dev/pod-networks`:
/// `{"ip_addresses":["10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"],"routes":[],"mtu":1400}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodNetwork {
    /// Interface addresses with the node subnet's prefix length, one per family.
    pub ip_addresses: Vec<IpNet>,
    /// MAC derived from the first address.
    pub mac_address: MacAddr,
    /// Default gateways (the `.1` of each node subnet).
    pub gateway_ips: Vec<IpAddr>,
    /// Extra routes.
    #[serde(default)]
    pub routes: Vec<PodRoute>,
    /// MTU of the pod's interface; 0: the node's (its agent decides from the uplink).
    pub mtu: u16,
}

impl PodNetwork {
    /// The pod's address of `family`, if it has one.
    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.ip_addresses.iter().find(|n| n.family() == family).map(|n| n.addr())
    }

    /// Checks what the contract promises beyond the JSON shape: at least one address, one
    /// per family, and the MAC derived from the first.
    pub fn validate(&self) -> Result<(), AnnotationError> {
        let first = self.ip_addresses.first().ok_or(AnnotationError::NoAddresses)?;
        check_one_per_family(POD_NETWORKS, &self.ip_addresses)?;
        let expected = MacAddr::derived(first.addr());
        if self.mac_address != expected {
            return Err(AnnotationError::MacMismatch { mac: self.mac_address, expected, ip: first.addr() });
        }
        Ok(())
    }
}

/// Parses and validates `skein.dev/pod-networks`, returning the default network.
pub fn parse_pod_networks(text: &str) -> Result<PodNetwork, AnnotationError> {
    let mut map: BTreeMap<String, PodNetwork> = parse_json(POD_NETWORKS, text)?;
    let net = map
        .remove(DEFAULT_NETWORK)
        .ok_or_else(|| AnnotationError::NoDefaultNetwork { annotation: POD_NETWORKS, value: quote(text) })?;
    net.validate()?;
    Ok(net)
}

/// Formats `skein.dev/pod-networks` with `network` as the default network.
pub fn format_pod_networks(network: &PodNetwork) -> String {
    let map: BTreeMap<&str, &PodNetwork> = [(DEFAULT_NETWORK, network)].into_iter().collect();
    // Strings, numbers and lists: serialization cannot fail.
    serde_json::to_string(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_examples_round_trip() {
        let text = r#"{"default":["10.244.1.0/24"]}"#;
        let subnets = parse_node_subnets(text).unwrap();
        assert_eq!(subnets, vec!["10.244.1.0/24".parse().unwrap()]);
        assert_eq!(format_node_subnets(&subnets), text);

        let text = r#"{"id":"5f0c","tunnel-ip":"192.0.2.11","encap":"geneve"}"#;
        let chassis = parse_chassis(text).unwrap();
        assert_eq!(chassis.tunnel_ip.to_string(), "192.0.2.11");
        assert_eq!(format_chassis(&chassis), text);

        let text = r#"{"default":{"ip_addresses":["10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"],"routes":[],"mtu":1400}}"#;
        let net = parse_pod_networks(text).unwrap();
        assert_eq!(net.mtu, 1400);
        assert_eq!(format_pod_networks(&net), text);
    }

    #[test]
    fn errors_name_field_and_value() {
        let err = parse_pod_networks(
            r#"{"default":{"ip_addresses":["10.244.1.500/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":[],"mtu":1400}}"#,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("default.ip_addresses[0]"), "{msg}");
        assert!(msg.contains("10.244.1.500/24"), "{msg}");

        let err = parse_pod_networks(
            r#"{"default":{"ip_addresses":["10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:06","gateway_ips":[],"mtu":1400}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, AnnotationError::MacMismatch { .. }), "{err}");

        assert!(matches!(parse_node_subnets(r#"{"other":[]}"#), Err(AnnotationError::NoDefaultNetwork { .. })));
        assert!(matches!(
            parse_node_subnets(r#"{"default":["10.0.0.0/24","10.0.1.0/24"]}"#),
            Err(AnnotationError::DuplicateFamily { .. })
        ));
        assert!(parse_chassis(r#"{"id":"","tunnel-ip":"192.0.2.1","encap":"geneve"}"#).is_err());
        assert!(parse_chassis(r#"{"id":"x","tunnel-ip":"192.0.2.1","encap":"vxlan"}"#).is_err());
        assert!(parse_node_subnets(r#"{"default":[]} trailing"#).is_err());
        let long = "x".repeat(10_000);
        assert!(parse_chassis(&long).unwrap_err().to_string().len() < 1000);
    }
}
