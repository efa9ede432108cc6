//! Discovery of RDMA host channel adapters (HCAs) from a sysfs tree and a /dev tree,
//! and the parsers for the sysfs attributes read on the way.
//!
//! Both roots are configurable so that tests (and containers that mount the host's trees
//! elsewhere) can point them at any directory; nothing here needs root.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Sysfs attributes are at most a page; more means the file is not what we expect.
const MAX_ATTRIBUTE_BYTES: u64 = 4096;

/// Link layer of an HCA port (`ports/<n>/link_layer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkLayer {
    /// Native InfiniBand.
    InfiniBand,
    /// RDMA over Converged Ethernet.
    Ethernet,
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkLayer::InfiniBand => "InfiniBand",
            LinkLayer::Ethernet => "Ethernet",
        })
    }
}

/// Logical state of an HCA port (`ports/<n>/state`), as numbered by the IB spec and the
/// kernel's `enum ib_port_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortState {
    /// 0: no state change.
    Nop,
    /// 1: link down.
    Down,
    /// 2: link up, not yet configured by the subnet manager.
    Init,
    /// 3: configured, not yet active.
    Armed,
    /// 4: active: traffic flows.
    Active,
    /// 5: active, waiting for a link that is going down.
    ActiveDefer,
}

impl PortState {
    fn from_number(n: u32) -> Option<PortState> {
        Some(match n {
            0 => PortState::Nop,
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            5 => PortState::ActiveDefer,
            _ => return None,
        })
    }

    fn from_name(name: &str) -> Option<PortState> {
        Some(match name {
            "NOP" => PortState::Nop,
            "DOWN" => PortState::Down,
            "INIT" => PortState::Init,
            "ARMED" => PortState::Armed,
            "ACTIVE" => PortState::Active,
            "ACTIVE_DEFER" => PortState::ActiveDefer,
            _ => return None,
        })
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortState::Nop => "NOP",
            PortState::Down => "DOWN",
            PortState::Init => "INIT",
            PortState::Armed => "ARMED",
            PortState::Active => "ACTIVE",
            PortState::ActiveDefer => "ACTIVE_DEFER",
        })
    }
}

/// One port of an HCA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Port number (1-based on HCAs).
    pub number: u32,
    /// State, or `None` if it could not be read.
    pub state: Option<PortState>,
    /// Link layer, or `None` if it could not be read.
    pub link_layer: Option<LinkLayer>,
}

/// An RDMA device as found in `/sys/class/infiniband/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hca {
    /// Kernel name, e.g. `mlx5_0`.
    pub name: String,
    /// Node GUID (`node_guid`).
    pub node_guid: Option<u64>,
    /// NUMA node of the PCI function; `None` when the kernel says -1 or it is unreadable.
    pub numa_node: Option<u32>,
    /// PCI vendor ID (`device/vendor`).
    pub vendor: Option<u16>,
    /// PCI device ID (`device/device`).
    pub device: Option<u16>,
    /// Driver of the PCI function (`device/driver` link), e.g. `mlx5_core`.
    pub driver: Option<String>,
    /// Ports in ascending order.
    pub ports: Vec<Port>,
    /// Network interfaces of the PCI function (`device/net/*`), sorted.
    pub netdevs: Vec<String>,
    /// File name of the verbs character device in `<dev>/infiniband/`, e.g. `uverbs0`,
    /// when both sysfs names it and the device node exists.
    pub uverbs: Option<String>,
    /// File names of the MAD character devices (`umadN`, one per port) that exist.
    pub umads: Vec<String>,
}

impl Hca {
    /// Whether any port is ACTIVE.
    pub fn any_port_active(&self) -> bool {
        self.ports.iter().any(|p| p.state == Some(PortState::Active))
    }

    /// Whether any port uses `layer`.
    pub fn has_link_layer(&self, layer: LinkLayer) -> bool {
        self.ports.iter().any(|p| p.link_layer == Some(layer))
    }

    /// Formats the node GUID the way sysfs does (`0002:c903:0031:7a40`).
    pub fn node_guid_text(&self) -> Option<String> {
        self.node_guid.map(|g| {
            format!(
                "{:04x}:{:04x}:{:04x}:{:04x}",
                (g >> 48) & 0xffff,
                (g >> 32) & 0xffff,
                (g >> 16) & 0xffff,
                g & 0xffff
            )
        })
    }
}

/// Everything one discovery pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// HCAs sorted by name.
    pub hcas: Vec<Hca>,
    /// Whether `<dev>/infiniband/rdma_cm` exists (shared by all HCAs).
    pub rdma_cm: bool,
    /// Problems with individual files, each naming the file and the value. A bad
    /// attribute makes that attribute unknown; it never hides the rest of the device.
    pub warnings: Vec<String>,
}

/// Where discovery looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryRoots {
    /// Root of the sysfs tree (`/sys` on a node).
    pub sysfs: PathBuf,
    /// Root of the device tree (`/dev` on a node).
    pub dev: PathBuf,
}

impl DiscoveryRoots {
    /// `<sysfs>/class/infiniband`.
    pub fn infiniband_class(&self) -> PathBuf {
        self.sysfs.join("class/infiniband")
    }

    /// `<dev>/infiniband`.
    pub fn infiniband_dev(&self) -> PathBuf {
        self.dev.join("infiniband")
    }
}

/// A sysfs attribute whose content is not what the kernel writes there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub struct AttributeError {
    /// The content (cut to 64 characters).
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

fn attribute_error(value: &str, expected: &'static str) -> AttributeError {
    AttributeError { value: value.trim().chars().take(64).collect(), expected }
}

/// Parses `node_guid`: four groups of four hex digits separated by colons.
pub fn parse_node_guid(text: &str) -> Result<u64, AttributeError> {
    const EXPECTED: &str = "a node GUID (xxxx:xxxx:xxxx:xxxx)";
    let trimmed = text.trim();
    let mut guid = 0u64;
    let mut groups = 0;
    for group in trimmed.split(':') {
        if group.len() != 4 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(attribute_error(text, EXPECTED));
        }
        let value = u16::from_str_radix(group, 16).map_err(|_| attribute_error(text, EXPECTED))?;
        guid = (guid << 16) | u64::from(value);
        groups += 1;
    }
    if groups != 4 {
        return Err(attribute_error(text, EXPECTED));
    }
    Ok(guid)
}

/// Parses `device/numa_node`: a node number, or -1 for "no NUMA affinity".
pub fn parse_numa_node(text: &str) -> Result<Option<u32>, AttributeError> {
    match text.trim() {
        "-1" => Ok(None),
        t => t.parse::<u32>().map(Some).map_err(|_| attribute_error(text, "a NUMA node number or -1")),
    }
}

/// Parses `device/vendor` or `device/device`: `0x` and four hex digits.
pub fn parse_pci_id(text: &str) -> Result<u16, AttributeError> {
    const EXPECTED: &str = "a PCI ID (0x and 4 hex digits)";
    let digits = text.trim().strip_prefix("0x").ok_or_else(|| attribute_error(text, EXPECTED))?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(attribute_error(text, EXPECTED));
    }
    u16::from_str_radix(digits, 16).map_err(|_| attribute_error(text, EXPECTED))
}

/// Parses `ports/<n>/state`, e.g. `4: ACTIVE`. The number is authoritative; a name
/// alone is accepted too.
pub fn parse_port_state(text: &str) -> Result<PortState, AttributeError> {
    const EXPECTED: &str = "a port state (e.g. \"4: ACTIVE\")";
    let trimmed = text.trim();
    let state = match trimmed.split_once(':') {
        Some((number, _name)) => number.trim().parse::<u32>().ok().and_then(PortState::from_number),
        None => PortState::from_name(trimmed),
    };
    state.ok_or_else(|| attribute_error(text, EXPECTED))
}

/// Parses `ports/<n>/link_layer` (`InfiniBand` or `Ethernet`).
pub fn parse_link_layer(text: &str) -> Result<LinkLayer, AttributeError> {
    match text.trim() {
        "InfiniBand" => Ok(LinkLayer::InfiniBand),
        "Ethernet" => Ok(LinkLayer::Ethernet),
        _ => Err(attribute_error(text, "a link layer (InfiniBand or Ethernet)")),
    }
}

/// Parses a link layer as written by people (config files): case-insensitive
/// `InfiniBand`/`IB` or `Ethernet`/`RoCE`/`Eth`.
pub fn parse_link_layer_name(text: &str) -> Option<LinkLayer> {
    let lower = text.trim().to_ascii_lowercase();
    match lower.as_str() {
        "infiniband" | "ib" => Some(LinkLayer::InfiniBand),
        "ethernet" | "eth" | "roce" => Some(LinkLayer::Ethernet),
        _ => None,
    }
}

/// Parses a sysfs on/off switch such as `ecn/roce_np/enable/<prio>`: `0` or `1`.
pub fn parse_enabled_flag(text: &str) -> Result<bool, AttributeError> {
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(attribute_error(text, "0 or 1")),
    }
}

// Names are used in device IDs, environment variables (comma-separated lists) and
// paths, so anything unusual is refused rather than escaped.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}

/// Reads a small sysfs attribute. `Ok(None)` when the file does not exist.
pub fn read_attribute(path: &Path) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(MAX_ATTRIBUTE_BYTES).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Sorted names of the entries of a directory; empty when it does not exist.
fn dir_names(path: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

struct Pass<'a> {
    roots: &'a DiscoveryRoots,
    warnings: Vec<String>,
}

impl Pass<'_> {
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    // Reads and parses one attribute; a missing file is `None` silently, a bad one is
    // `None` with a warning naming the file and the value.
    fn attribute<T>(&mut self, path: &Path, parse: impl FnOnce(&str) -> Result<T, AttributeError>) -> Option<T> {
        match read_attribute(path) {
            Ok(None) => None,
            Ok(Some(text)) => match parse(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.warn(format!("{}: {e}", path.display()));
                    None
                }
            },
            Err(e) => {
                self.warn(format!("{}: cannot read: {e}", path.display()));
                None
            }
        }
    }

    fn names(&mut self, path: &Path) -> Vec<String> {
        match dir_names(path) {
            Ok(names) => names,
            Err(e) => {
                self.warn(format!("{}: cannot list: {e}", path.display()));
                Vec::new()
            }
        }
    }

    // `class/<class>/<node>/ibdev` names the HCA each character device belongs to; the
    // PCI function's `<class>/` directory is the fallback for trees without the class.
    fn char_devices_by_hca(&mut self, class: &str) -> BTreeMap<String, Vec<String>> {
        let class_dir = self.roots.sysfs.join("class").join(class);
        let mut by_hca: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in self.names(&class_dir) {
            if !is_plain_name(&node) {
                continue;
            }
            let ibdev_path = class_dir.join(&node).join("ibdev");
            if let Some(ibdev) = self.attribute(&ibdev_path, |t| Ok(t.trim().to_owned())) {
                by_hca.entry(ibdev).or_default().push(node);
            }
        }
        by_hca
    }

    fn hca(&mut self, name: &str, verbs: &BTreeMap<String, Vec<String>>, mads: &BTreeMap<String, Vec<String>>) -> Hca {
        let dir = self.roots.infiniband_class().join(name);
        let device_dir = dir.join("device");
        let node_guid = self.attribute(&dir.join("node_guid"), parse_node_guid);
        let numa_node = self.attribute(&device_dir.join("numa_node"), parse_numa_node).flatten();
        let vendor = self.attribute(&device_dir.join("vendor"), parse_pci_id);
        let device = self.attribute(&device_dir.join("device"), parse_pci_id);
        let driver = std::fs::read_link(device_dir.join("driver"))
            .ok()
            .and_then(|target| target.file_name()?.to_str().map(str::to_owned));

        let mut ports = Vec::new();
        let ports_dir = dir.join("ports");
        for entry in self.names(&ports_dir) {
            let Ok(number) = entry.parse::<u32>() else {
                self.warn(format!("{}: {entry:?} is not a port number", ports_dir.display()));
                continue;
            };
            let port_dir = ports_dir.join(&entry);
            ports.push(Port {
                number,
                state: self.attribute(&port_dir.join("state"), parse_port_state),
                link_layer: self.attribute(&port_dir.join("link_layer"), parse_link_layer),
            });
        }
        ports.sort_by_key(|p| p.number);

        let netdevs = self.names(&device_dir.join("net")).into_iter().filter(|n| is_plain_name(n)).collect();

        let dev_dir = self.roots.infiniband_dev();
        let uverbs_candidates = match verbs.get(name) {
            Some(nodes) => nodes.clone(),
            None => self.names(&device_dir.join("infiniband_verbs")),
        };
        let mut uverbs = None;
        for node in uverbs_candidates.into_iter().filter(|n| is_plain_name(n)) {
            if dev_dir.join(&node).exists() {
                uverbs = Some(node);
                break;
            }
            self.warn(format!("{name}: sysfs names {node} but {} does not exist", dev_dir.join(&node).display()));
        }
        let umad_candidates = match mads.get(name) {
            Some(nodes) => nodes.clone(),
            None => self.names(&device_dir.join("infiniband_mad")),
        };
        let umads = umad_candidates
            .into_iter()
            .filter(|n| is_plain_name(n) && n.starts_with("umad") && dev_dir.join(n).exists())
            .collect();

        Hca { name: name.to_owned(), node_guid, numa_node, vendor, device, driver, ports, netdevs, uverbs, umads }
    }
}

/// Finds every HCA under `<sysfs>/class/infiniband`. A node without RDMA (no such
/// directory) simply has none.
pub fn discover(roots: &DiscoveryRoots) -> Discovery {
    let mut pass = Pass { roots, warnings: Vec::new() };
    let verbs = pass.char_devices_by_hca("infiniband_verbs");
    let mads = pass.char_devices_by_hca("infiniband_mad");
    let mut hcas = Vec::new();
    for name in pass.names(&roots.infiniband_class()) {
        if !is_plain_name(&name) {
            pass.warn(format!(
                "{}: HCA name {name:?} has unexpected characters; ignored",
                roots.infiniband_class().display()
            ));
            continue;
        }
        hcas.push(pass.hca(&name, &verbs, &mads));
    }
    let rdma_cm = roots.infiniband_dev().join("rdma_cm").exists();
    Discovery { hcas, rdma_cm, warnings: pass.warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_guid() {
        assert_eq!(parse_node_guid("0002:c903:0031:7a40\n"), Ok(0x0002_c903_0031_7a40));
        for bad in [
            "",
            "0002:c903:0031",
            "0002:c903:0031:7a40:0000",
            "00g2:c903:0031:7a40",
            "2:c903:0031:7a40",
            "+002:c903:0031:7a40",
        ] {
            assert!(parse_node_guid(bad).is_err(), "{bad:?}");
        }
        let hca = Hca {
            name: "x".into(),
            node_guid: Some(0x0002_c903_0031_7a40),
            numa_node: None,
            vendor: None,
            device: None,
            driver: None,
            ports: vec![],
            netdevs: vec![],
            uverbs: None,
            umads: vec![],
        };
        assert_eq!(hca.node_guid_text().as_deref(), Some("0002:c903:0031:7a40"));
    }

    #[test]
    fn numa_and_pci() {
        assert_eq!(parse_numa_node("-1\n"), Ok(None));
        assert_eq!(parse_numa_node("1\n"), Ok(Some(1)));
        assert!(parse_numa_node("-2").is_err());
        assert!(parse_numa_node("x").is_err());
        assert_eq!(parse_pci_id("0x15b3\n"), Ok(0x15b3));
        assert!(parse_pci_id("15b3").is_err());
        assert!(parse_pci_id("0x15b").is_err());
        assert!(parse_pci_id("0x+5b3").is_err());
    }

    #[test]
    fn port_state_and_link_layer() {
        assert_eq!(parse_port_state("4: ACTIVE\n"), Ok(PortState::Active));
        assert_eq!(parse_port_state("1: DOWN"), Ok(PortState::Down));
        assert_eq!(parse_port_state("ARMED"), Ok(PortState::Armed));
        assert!(parse_port_state("9: WEIRD").is_err());
        assert!(parse_port_state("").is_err());
        assert_eq!(parse_link_layer("Ethernet\n"), Ok(LinkLayer::Ethernet));
        assert!(parse_link_layer("ethernet").is_err());
        assert_eq!(parse_link_layer_name("RoCE"), Some(LinkLayer::Ethernet));
        assert_eq!(parse_link_layer_name("ib"), Some(LinkLayer::InfiniBand));
        assert_eq!(parse_enabled_flag("1\n"), Ok(true));
        assert!(parse_enabled_flag("yes").is_err());
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn discovery_reads_class_links_and_reports_bad_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let roots = DiscoveryRoots { sysfs: dir.path().join("sys"), dev: dir.path().join("dev") };
        let hca = roots.infiniband_class().join("rxe0");
        write(&hca.join("node_guid"), "not-a-guid\n");
        write(&hca.join("ports/2/state"), "4: ACTIVE\n");
        write(&hca.join("ports/2/link_layer"), "Ethernet\n");
        write(&hca.join("ports/1/state"), "1: DOWN\n");
        write(&hca.join("ports/1/link_layer"), "Token Ring\n");
        write(&hca.join("ports/x/state"), "4: ACTIVE\n");
        write(&hca.join("device/numa_node"), "-1\n");
        // Character devices found through their class, not the PCI function.
        write(&roots.sysfs.join("class/infiniband_verbs/uverbs3/ibdev"), "rxe0\n");
        write(&roots.sysfs.join("class/infiniband_verbs/uverbs4/ibdev"), "other\n");
        write(&roots.sysfs.join("class/infiniband_mad/umad7/ibdev"), "rxe0\n");
        write(&roots.dev.join("infiniband/uverbs3"), "");
        write(&roots.dev.join("infiniband/umad7"), "");
        // A name that must not reach device IDs or environment variables.
        std::fs::create_dir_all(roots.infiniband_class().join("bad,name")).unwrap();

        let found = discover(&roots);
        assert_eq!(found.hcas.len(), 1);
        let rxe = &found.hcas[0];
        assert_eq!(rxe.name, "rxe0");
        assert_eq!(rxe.node_guid, None);
        assert_eq!(rxe.numa_node, None);
        assert_eq!(rxe.uverbs.as_deref(), Some("uverbs3"));
        assert_eq!(rxe.umads, ["umad7"]);
        assert_eq!(rxe.ports.len(), 2);
        assert_eq!(rxe.ports[0].number, 1);
        assert_eq!(rxe.ports[0].link_layer, None);
        assert!(rxe.any_port_active());
        assert!(rxe.has_link_layer(LinkLayer::Ethernet));
        assert!(!found.rdma_cm);
        let warnings = found.warnings.join("\n");
        for needle in ["not-a-guid", "Token Ring", "\"x\" is not a port number", "bad,name"] {
            assert!(warnings.contains(needle), "{needle:?} not in {warnings}");
        }
    }

    #[test]
    fn discovery_of_missing_tree_is_empty() {
        let roots = DiscoveryRoots { sysfs: PathBuf::from("/nonexistent/sys"), dev: PathBuf::from("/nonexistent/dev") };
        let found = discover(&roots);
        assert!(found.hcas.is_empty());
        assert!(!found.rdma_cm);
        assert!(found.warnings.is_empty());
    }
}
