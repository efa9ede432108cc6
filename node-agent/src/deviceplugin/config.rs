//! The device plugin's configuration file: which RDMA resources to advertise, how HCAs
//! are selected for each, shared mode, and what RoCE QoS settings count as "ready".
//!
//! JSON and YAML are both accepted (YAML is read into a JSON value first, so that every
//! error carries the path of the offending field, e.g. `resources[0].selectors.vendors[1]`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::sysfs::{LinkLayer, parse_link_layer_name};

/// Largest configuration file accepted; real ones are a few hundred bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Upper bound for `sharedSlots`: kubelet keeps every device ID in memory and in its
/// checkpoint, and no workload shares one HCA between more containers than this.
pub const MAX_SHARED_SLOTS: u32 = 1000;

/// Resource name used when no configuration file is given.
pub const DEFAULT_RESOURCE_NAME: &str = "skein.dev/rdma";

/// A validated device plugin configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Resources in file order; an HCA is advertised by the first resource it matches.
    pub resources: Vec<ResourceConfig>,
    /// What a RoCE device's QoS settings are compared against.
    pub roce: RoceExpectation,
}

/// One extended resource advertised to kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Extended resource name, `<domain>/<name>`, e.g. `skein.dev/rdma`.
    pub name: String,
    /// Which HCAs belong to this resource.
    pub selectors: Selectors,
    /// `Some(n)`: every HCA is advertised as `n` device IDs that share it;
    /// `None`: every HCA is one device ID, given to one container at a time.
    pub shared_slots: Option<u32>,
}

/// HCA selectors. Every non-empty list must match (AND); within a list any entry may
/// match (OR). Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// PCI vendor IDs (`device/vendor`), e.g. 0x15b3 for Mellanox/NVIDIA.
    pub vendors: BTreeSet<u16>,
    /// PCI device IDs (`device/device`), e.g. 0x1017 for ConnectX-5.
    pub device_ids: BTreeSet<u16>,
    /// Kernel driver names of the PCI function, e.g. `mlx5_core`.
    pub drivers: BTreeSet<String>,
    /// Network interface names; an HCA matches if any of its netdevs is listed.
    pub netdevs: BTreeSet<String>,
    /// Link layers; an HCA matches if any of its ports has a listed link layer.
    pub link_layers: BTreeSet<LinkLayer>,
}

/// DSCP/PCP trust mode a RoCE port is expected to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrustMode {
    /// Priority from the IP header's DSCP field (the usual RoCE v2 set-up).
    Dscp,
    /// Priority from the VLAN header's PCP field.
    Pcp,
}

impl fmt::Display for TrustMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustMode::Dscp => "dscp",
            TrustMode::Pcp => "pcp",
        })
    }
}

/// Expected RoCE QoS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoceExpectation {
    /// Expected trust mode; `None` does not check trust.
    pub trust: Option<TrustMode>,
    /// Priorities (0–7) on which PFC must be enabled.
    pub pfc_priorities: BTreeSet<u8>,
    /// Priorities (0–7) on which ECN must be enabled, as notification point and as
    /// reaction point.
    pub ecn_priorities: BTreeSet<u8>,
}

impl Default for RoceExpectation {
    fn default() -> Self {
        RoceExpectation {
            trust: Some(TrustMode::Dscp),
            pfc_priorities: BTreeSet::from([3]),
            ecn_priorities: BTreeSet::from([3]),
        }
    }
}

impl Default for Config {
    /// One exclusive resource, `skein.dev/rdma`, holding every HCA.
    fn default() -> Self {
        Config {
            resources: vec![ResourceConfig {
                name: DEFAULT_RESOURCE_NAME.to_owned(),
                selectors: Selectors::default(),
                shared_slots: None,
            }],
            roce: RoceExpectation::default(),
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read device plugin config {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The text is not valid JSON/YAML.
    #[error("device plugin config is not valid {format}: {reason}")]
    Syntax {
        /// `JSON` or `YAML`.
        format: &'static str,
        /// The parser's message, with its location.
        reason: String,
    },
    /// A field has a wrong type, an unknown name, or a value out of range.
    #[error("device plugin config field `{field}`: {reason}")]
    Field {
        /// Path of the field, e.g. `resources[0].selectors.vendors[1]`.
        field: String,
        /// What is wrong, quoting the value.
        reason: String,
    },
}

/// Text format of a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML (which also reads JSON).
    Yaml,
}

impl Format {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |reason: String| ConfigError::Read { path: path.display().to_string(), reason };
        let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(read_error(format!("{} bytes, more than the {MAX_CONFIG_BYTES} accepted", bytes.len())));
        }
        let text = String::from_utf8(bytes).map_err(|e| read_error(format!("not UTF-8: {e}")))?;
        Config::parse(&text, Format::from_path(path))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax {
                format: format.name(),
                reason: format!("{} bytes, more than the {MAX_CONFIG_BYTES} accepted", text.len()),
            });
        }
        let value: serde_json::Value = match format {
            Format::Json => {
                serde_json::from_str(text).map_err(|e| ConfigError::Syntax { format: "JSON", reason: e.to_string() })?
            }
            Format::Yaml => serde_saphyr::from_str(text)
                .map_err(|e| ConfigError::Syntax { format: "YAML", reason: e.to_string() })?,
        };
        let file: ConfigFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = match e.path().to_string() {
                path if path == "." => "<document>".to_owned(),
                path => path,
            };
            ConfigError::Field { field, reason: e.into_inner().to_string() }
        })?;
        file.validate()
    }
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

// The file's shape. Unknown fields are errors: a misspelt selector must not silently
// widen a resource to every HCA.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    resources: Vec<ResourceFile>,
    #[serde(default)]
    roce: Option<RoceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourceFile {
    name: String,
    #[serde(default)]
    selectors: SelectorsFile,
    #[serde(default)]
    shared_slots: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorsFile {
    #[serde(default)]
    vendors: Vec<PciIdText>,
    #[serde(default, rename = "deviceIDs", alias = "deviceIds")]
    device_ids: Vec<PciIdText>,
    #[serde(default)]
    drivers: Vec<String>,
    #[serde(default)]
    netdevs: Vec<String>,
    #[serde(default)]
    link_layers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RoceFile {
    #[serde(default = "default_trust_text")]
    trust: Option<String>,
    #[serde(default = "default_priorities")]
    pfc_priorities: Vec<i64>,
    #[serde(default = "default_priorities")]
    ecn_priorities: Vec<i64>,
}

fn default_trust_text() -> Option<String> {
    Some("dscp".to_owned())
}

fn default_priorities() -> Vec<i64> {
    vec![3]
}

// A PCI ID must be a string: YAML reads `1017` as decimal and `0x1017` as 4119, and
// neither can be told apart from the other afterwards, so numbers get a clear error.
#[derive(Deserialize)]
#[serde(untagged)]
enum PciIdText {
    Text(String),
    Number(serde_json::Number),
}

impl PciIdText {
    fn parse(&self) -> Result<u16, String> {
        match self {
            PciIdText::Text(t) => parse_pci_id_selector(t),
            PciIdText::Number(n) => Err(format!("{n} is a number; write PCI IDs as quoted hex strings, e.g. \"1017\"")),
        }
    }
}

fn field_error(field: String, reason: String) -> ConfigError {
    ConfigError::Field { field, reason }
}

impl ConfigFile {
    fn validate(self) -> Result<Config, ConfigError> {
        if self.resources.is_empty() {
            return Err(field_error("resources".into(), "must list at least one resource".into()));
        }
        let mut names = BTreeSet::new();
        let mut resources = Vec::with_capacity(self.resources.len());
        for (i, resource) in self.resources.into_iter().enumerate() {
            let at = format!("resources[{i}]");
            validate_resource_name(&resource.name).map_err(|reason| field_error(format!("{at}.name"), reason))?;
            if !names.insert(resource.name.clone()) {
                return Err(field_error(
                    format!("{at}.name"),
                    format!("{:?} is used by an earlier resource", resource.name),
                ));
            }
            let shared_slots = match resource.shared_slots {
                None => None,
                Some(n) if (1..=i64::from(MAX_SHARED_SLOTS)).contains(&n) => {
                    // In range 1..=MAX_SHARED_SLOTS, so it fits a u32.
                    Some(n as u32)
                }
                Some(n) => {
                    return Err(field_error(
                        format!("{at}.sharedSlots"),
                        format!("{n} is out of range 1..={MAX_SHARED_SLOTS}"),
                    ));
                }
            };
            let selectors = resource.selectors.validate(&format!("{at}.selectors"))?;
            resources.push(ResourceConfig { name: resource.name, selectors, shared_slots });
        }
        let roce = match self.roce {
            None => RoceExpectation::default(),
            Some(roce) => roce.validate()?,
        };
        Ok(Config { resources, roce })
    }
}

impl SelectorsFile {
    fn validate(self, at: &str) -> Result<Selectors, ConfigError> {
        let mut selectors = Selectors::default();
        for (i, id) in self.vendors.iter().enumerate() {
            let id = id.parse().map_err(|reason| field_error(format!("{at}.vendors[{i}]"), reason))?;
            selectors.vendors.insert(id);
        }
        for (i, id) in self.device_ids.iter().enumerate() {
            let id = id.parse().map_err(|reason| field_error(format!("{at}.deviceIDs[{i}]"), reason))?;
            selectors.device_ids.insert(id);
        }
        for (i, driver) in self.drivers.into_iter().enumerate() {
            validate_plain_name(&driver, 64).map_err(|reason| field_error(format!("{at}.drivers[{i}]"), reason))?;
            selectors.drivers.insert(driver);
        }
        for (i, netdev) in self.netdevs.into_iter().enumerate() {
            // IFNAMSIZ is 16 including the terminating NUL.
            validate_plain_name(&netdev, 15).map_err(|reason| field_error(format!("{at}.netdevs[{i}]"), reason))?;
            selectors.netdevs.insert(netdev);
        }
        for (i, layer) in self.link_layers.iter().enumerate() {
            let layer = parse_link_layer_name(layer).ok_or_else(|| {
                field_error(
                    format!("{at}.linkLayers[{i}]"),
                    format!("{layer:?} is not a link layer (InfiniBand/IB or Ethernet/RoCE)"),
                )
            })?;
            selectors.link_layers.insert(layer);
        }
        Ok(selectors)
    }
}

impl RoceFile {
    fn validate(self) -> Result<RoceExpectation, ConfigError> {
        let trust = match self.trust.as_deref() {
            None => None,
            Some(t) if t.eq_ignore_ascii_case("dscp") => Some(TrustMode::Dscp),
            Some(t) if t.eq_ignore_ascii_case("pcp") => Some(TrustMode::Pcp),
            Some(t) if t.eq_ignore_ascii_case("any") => None,
            Some(t) => {
                return Err(field_error("roce.trust".into(), format!("{t:?} is not one of dscp, pcp, any")));
            }
        };
        Ok(RoceExpectation {
            trust,
            pfc_priorities: priorities(&self.pfc_priorities, "roce.pfcPriorities")?,
            ecn_priorities: priorities(&self.ecn_priorities, "roce.ecnPriorities")?,
        })
    }
}

fn priorities(values: &[i64], at: &str) -> Result<BTreeSet<u8>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &p)| match u8::try_from(p) {
            Ok(p) if p <= 7 => Ok(p),
            _ => Err(field_error(format!("{at}[{i}]"), format!("{p} is not a priority (0..=7)"))),
        })
        .collect()
}

/// Parses a PCI vendor or device ID as written in the config: 1–4 hex digits with an
/// optional `0x` prefix.
pub fn parse_pci_id_selector(text: &str) -> Result<u16, String> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{text:?} is not a PCI ID (1 to 4 hex digits, e.g. \"15b3\")"));
    }
    u16::from_str_radix(digits, 16).map_err(|e| format!("{text:?} is not a PCI ID: {e}"))
}

// Kubelet accepts extended resources named `<domain>/<name>` outside `kubernetes.io`,
// with a DNS-subdomain domain and a qualified-name name.
fn validate_resource_name(name: &str) -> Result<(), String> {
    let Some((domain, short)) = name.split_once('/') else {
        return Err(format!("{name:?} is not `<domain>/<name>` (e.g. \"skein.dev/rdma\")"));
    };
    let dns_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if domain.len() > 253 || !domain.split('.').all(dns_label) {
        return Err(format!("{name:?}: domain {domain:?} is not a lowercase DNS subdomain"));
    }
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Err(format!("{name:?}: the kubernetes.io domain is reserved for Kubernetes' own resources"));
    }
    let name_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if short.is_empty()
        || short.len() > 63
        || !short.bytes().all(name_char)
        || !short.as_bytes()[0].is_ascii_alphanumeric()
        || !short.as_bytes()[short.len() - 1].is_ascii_alphanumeric()
    {
        return Err(format!(
            "{name:?}: name {short:?} must be 1 to 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_plain_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty()
        || name.len() > max_len
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} is not a name (1 to {max_len} characters, no '/' or whitespace)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn parses_full_yaml() {
        let config = Config::parse(
            r#"
resources:
  - name: skein.dev/rdma
    selectors:
      vendors: ["15b3", "0x1077"]
      deviceIDs: ["1017", "0x101b"]
      drivers: [mlx5_core]
      linkLayers: [IB]
  - name: rdma/hca_shared
    sharedSlots: 8
    selectors:
      netdevs: [ens2f0]
      linkLayers: [Ethernet]
roce:
  trust: pcp
  pfcPriorities: [3, 4]
  ecnPriorities: [3]
"#,
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(config.resources.len(), 2);
        let rdma = &config.resources[0];
        assert_eq!(rdma.selectors.vendors, BTreeSet::from([0x15b3, 0x1077]));
        assert_eq!(rdma.selectors.device_ids, BTreeSet::from([0x1017, 0x101b]));
        assert_eq!(rdma.selectors.link_layers, BTreeSet::from([LinkLayer::InfiniBand]));
        assert_eq!(rdma.shared_slots, None);
        let shared = &config.resources[1];
        assert_eq!(shared.shared_slots, Some(8));
        assert_eq!(shared.selectors.netdevs, BTreeSet::from(["ens2f0".to_owned()]));
        assert_eq!(config.roce.trust, Some(TrustMode::Pcp));
        assert_eq!(config.roce.pfc_priorities, BTreeSet::from([3, 4]));
    }

    #[test]
    fn json_and_defaults() {
        let config = Config::parse(r#"{"resources":[{"name":"skein.dev/rdma"}]}"#, Format::Json).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            (
                "resources: [{name: skein.dev/rdma, selectors: {vendors: [\"zz\"]}}]",
                "resources[0].selectors.vendors[0]",
                "\"zz\"",
            ),
            (
                "resources: [{name: skein.dev/rdma, selectors: {vendorz: [\"15b3\"]}}]",
                "resources[0].selectors.vendorz",
                "unknown field",
            ),
            ("resources: [{name: rdma}]", "resources[0].name", "\"rdma\""),
            (
                "resources: [{name: a.io/x, selectors: {deviceIDs: [1017]}}]",
                "resources[0].selectors.deviceIDs[0]",
                "quoted hex",
            ),
            ("resources: [{name: a.io/x}, {name: a.io/x}]", "resources[1].name", "earlier"),
            ("resources: [{name: a.io/x, sharedSlots: 0}]", "resources[0].sharedSlots", "0 is out of range"),
            (
                "resources: [{name: a.io/x, selectors: {linkLayers: [fddi]}}]",
                "resources[0].selectors.linkLayers[0]",
                "fddi",
            ),
            ("resources: [{name: a.io/x}]\nroce: {pfcPriorities: [9]}", "roce.pfcPriorities[0]", "9 is not a priority"),
            ("resources: [{name: a.io/x}]\nroce: {trust: maybe}", "roce.trust", "maybe"),
            ("resources: [{name: a.io/x, sharedSlots: lots}]", "resources[0].sharedSlots", "lots"),
            ("resources: []", "resources", "at least one"),
            ("resources: [{name: kubernetes.io/rdma}]", "resources[0].name", "reserved"),
        ];
        for (text, field, needle) in cases {
            let err = Config::parse(text, Format::Yaml).unwrap_err();
            let message = err.to_string();
            assert_eq!(field_of(err), field, "for {text}");
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(matches!(
            Config::parse("{resources: [", Format::Yaml),
            Err(ConfigError::Syntax { format: "YAML", .. })
        ));
        assert!(matches!(
            Config::parse("{\"resources\": [", Format::Json),
            Err(ConfigError::Syntax { format: "JSON", .. })
        ));
        assert!(matches!(Config::parse("[1, 2]", Format::Json), Err(ConfigError::Field { .. })));
    }

    #[test]
    fn pci_ids() {
        assert_eq!(parse_pci_id_selector("15b3"), Ok(0x15b3));
        assert_eq!(parse_pci_id_selector("0x15B3"), Ok(0x15b3));
        assert!(parse_pci_id_selector("").is_err());
        assert!(parse_pci_id_selector("0x").is_err());
        assert!(parse_pci_id_selector("12345").is_err());
        assert!(parse_pci_id_selector("+1").is_err());
    }
}
