//! What each configured resource advertises: discovered HCAs matched against the
//! resource's selectors, turned into device IDs with a health and a NUMA node.
//!
//! Pure functions over a [`Discovery`]; the device plugin service reads the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use skein_proto::deviceplugin::v1beta1 as api;

use super::config::{Config, ResourceConfig, Selectors};
use super::sysfs::{Discovery, Hca};

/// Kubelet refuses device IDs longer than this.
pub const MAX_DEVICE_ID_LEN: usize = 63;

/// Why a device is unhealthy, or that it is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// At least one port is ACTIVE and the verbs device node exists.
    Healthy,
    /// No port is ACTIVE.
    NoActivePort,
    /// No `uverbsN` device node: user space cannot open the HCA.
    NoVerbsDevice,
}

impl Health {
    /// Health of an HCA. All shared slots of an HCA take the HCA's health.
    pub fn of(hca: &Hca) -> Health {
        if hca.uverbs.is_none() {
            Health::NoVerbsDevice
        } else if !hca.any_port_active() {
            Health::NoActivePort
        } else {
            Health::Healthy
        }
    }

    /// Whether kubelet may allocate the device.
    pub fn is_healthy(self) -> bool {
        self == Health::Healthy
    }

    /// The string kubelet expects in `Device.health`.
    pub fn kubelet_health(self) -> &'static str {
        if self.is_healthy() { api::HEALTHY } else { api::UNHEALTHY }
    }

    /// Short reason for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Health::Healthy => "at least one port ACTIVE",
            Health::NoActivePort => "no port is ACTIVE",
            Health::NoVerbsDevice => "no uverbs character device",
        }
    }
}

/// One advertised device ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedDevice {
    /// The ID kubelet sees: the HCA name, or `<hca>-slot<k>` in shared mode.
    pub id: String,
    /// The HCA behind the ID.
    pub hca: Arc<Hca>,
    /// Health of the HCA.
    pub health: Health,
}

/// The devices one resource advertises.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceInventory {
    /// Device IDs in order.
    pub devices: BTreeMap<String, AdvertisedDevice>,
    /// Whether `/dev/infiniband/rdma_cm` exists.
    pub rdma_cm: bool,
}

impl ResourceInventory {
    /// The list sent on ListAndWatch.
    pub fn kubelet_devices(&self) -> Vec<api::Device> {
        self.devices
            .values()
            .map(|d| api::Device {
                id: d.id.clone(),
                health: d.health.kubelet_health().to_owned(),
                topology: d
                    .hca
                    .numa_node
                    .map(|node| api::TopologyInfo { nodes: vec![api::NumaNode { id: i64::from(node) }] }),
            })
            .collect()
    }

    /// Distinct HCAs of this resource.
    pub fn hcas(&self) -> BTreeMap<&str, &Arc<Hca>> {
        self.devices.values().map(|d| (d.hca.name.as_str(), &d.hca)).collect()
    }

    /// Number of device IDs that are healthy and unhealthy.
    pub fn health_counts(&self) -> (usize, usize) {
        let healthy = self.devices.values().filter(|d| d.health.is_healthy()).count();
        (healthy, self.devices.len() - healthy)
    }
}

impl Selectors {
    /// Whether `hca` matches every non-empty selector list.
    pub fn matches(&self, hca: &Hca) -> bool {
        let any_of = |set_is_empty: bool, matched: bool| set_is_empty || matched;
        any_of(self.vendors.is_empty(), hca.vendor.is_some_and(|v| self.vendors.contains(&v)))
            && any_of(self.device_ids.is_empty(), hca.device.is_some_and(|d| self.device_ids.contains(&d)))
            && any_of(self.drivers.is_empty(), hca.driver.as_ref().is_some_and(|d| self.drivers.contains(d)))
            && any_of(self.netdevs.is_empty(), hca.netdevs.iter().any(|n| self.netdevs.contains(n)))
            && any_of(self.link_layers.is_empty(), self.link_layers.iter().any(|&l| hca.has_link_layer(l)))
    }
}

/// Device IDs of `hca` under `resource`.
pub fn device_ids(resource: &ResourceConfig, hca: &Hca) -> Vec<String> {
    match resource.shared_slots {
        None => vec![hca.name.clone()],
        Some(slots) => (0..slots).map(|slot| format!("{}-slot{slot}", hca.name)).collect(),
    }
}

/// Assigns every discovered HCA to the first resource whose selectors match it, in
/// config order, so that one HCA is never handed out by two resources. Returns one
/// inventory per configured resource (same order) and warnings for skipped HCAs.
pub fn build_inventories(config: &Config, discovery: &Discovery) -> (Vec<ResourceInventory>, Vec<String>) {
    let mut inventories =
        vec![ResourceInventory { devices: BTreeMap::new(), rdma_cm: discovery.rdma_cm }; config.resources.len()];
    let mut warnings = Vec::new();
    for hca in &discovery.hcas {
        let Some(index) = config.resources.iter().position(|r| r.selectors.matches(hca)) else {
            continue;
        };
        let resource = &config.resources[index];
        let ids = device_ids(resource, hca);
        if let Some(long) = ids.iter().find(|id| id.len() > MAX_DEVICE_ID_LEN) {
            warnings.push(format!(
                "{}: device ID {long:?} is longer than {MAX_DEVICE_ID_LEN} characters; \
                 not advertised as {}",
                hca.name, resource.name
            ));
            continue;
        }
        let hca = Arc::new(hca.clone());
        let health = Health::of(&hca);
        for id in ids {
            inventories[index].devices.insert(id.clone(), AdvertisedDevice { id, hca: Arc::clone(&hca), health });
        }
    }
    (inventories, warnings)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::deviceplugin::config::RoceExpectation;
    use crate::deviceplugin::sysfs::{LinkLayer, Port, PortState};

    fn hca(name: &str, layer: LinkLayer, state: PortState, numa: Option<u32>) -> Hca {
        Hca {
            name: name.into(),
            node_guid: None,
            numa_node: numa,
            vendor: Some(0x15b3),
            device: Some(0x1017),
            driver: Some("mlx5_core".into()),
            ports: vec![Port { number: 1, state: Some(state), link_layer: Some(layer) }],
            netdevs: vec![format!("{name}-net")],
            uverbs: Some(format!("uverbs{}", name.len())),
            umads: vec![],
        }
    }

    fn resource(name: &str, selectors: Selectors, shared_slots: Option<u32>) -> ResourceConfig {
        ResourceConfig { name: name.into(), selectors, shared_slots }
    }

    #[test]
    fn first_matching_resource_wins_and_shared_slots_multiply() {
        let config = Config {
            resources: vec![
                resource(
                    "a.io/ib",
                    Selectors { link_layers: BTreeSet::from([LinkLayer::InfiniBand]), ..Selectors::default() },
                    None,
                ),
                resource("a.io/any", Selectors::default(), Some(3)),
            ],
            roce: RoceExpectation::default(),
        };
        let discovery = Discovery {
            hcas: vec![
                hca("ib0", LinkLayer::InfiniBand, PortState::Active, Some(0)),
                hca("roce0", LinkLayer::Ethernet, PortState::Down, None),
            ],
            rdma_cm: true,
            warnings: vec![],
        };
        let (inventories, warnings) = build_inventories(&config, &discovery);
        assert!(warnings.is_empty());
        let ib: Vec<_> = inventories[0].devices.keys().cloned().collect();
        assert_eq!(ib, ["ib0"]);
        let any: Vec<_> = inventories[1].devices.keys().cloned().collect();
        assert_eq!(any, ["roce0-slot0", "roce0-slot1", "roce0-slot2"]);
        let listed = inventories[1].kubelet_devices();
        assert!(listed.iter().all(|d| d.health == api::UNHEALTHY && d.topology.is_none()));
        let listed = inventories[0].kubelet_devices();
        assert_eq!(listed[0].health, api::HEALTHY);
        assert_eq!(listed[0].topology.as_ref().unwrap().nodes[0].id, 0);
        assert_eq!(inventories[1].health_counts(), (0, 3));
    }

    #[test]
    fn selectors_are_anded_across_fields() {
        let h = hca("mlx5_0", LinkLayer::Ethernet, PortState::Active, None);
        let mut s = Selectors {
            vendors: BTreeSet::from([0x15b3]),
            drivers: BTreeSet::from(["mlx5_core".to_owned()]),
            ..Selectors::default()
        };
        assert!(s.matches(&h));
        s.netdevs = BTreeSet::from(["other".to_owned()]);
        assert!(!s.matches(&h));
        s.netdevs = BTreeSet::from(["mlx5_0-net".to_owned()]);
        assert!(s.matches(&h));
        s.device_ids = BTreeSet::from([0x101b]);
        assert!(!s.matches(&h));
        let mut unknown_vendor = h.clone();
        unknown_vendor.vendor = None;
        let vendor_only = Selectors { vendors: BTreeSet::from([0x15b3]), ..Selectors::default() };
        assert!(!vendor_only.matches(&unknown_vendor));
    }

    #[test]
    fn health_rules() {
        let mut h = hca("mlx5_0", LinkLayer::InfiniBand, PortState::Active, None);
        assert_eq!(Health::of(&h), Health::Healthy);
        h.ports.push(Port { number: 2, state: Some(PortState::Down), link_layer: Some(LinkLayer::InfiniBand) });
        assert_eq!(Health::of(&h), Health::Healthy, "one ACTIVE port is enough");
        h.ports[0].state = Some(PortState::Init);
        assert_eq!(Health::of(&h), Health::NoActivePort);
        h.ports[0].state = Some(PortState::Active);
        h.uverbs = None;
        assert_eq!(Health::of(&h), Health::NoVerbsDevice);
    }

    #[test]
    fn overlong_ids_are_skipped_with_a_warning() {
        let config = Config {
            resources: vec![resource("a.io/x", Selectors::default(), Some(2))],
            roce: RoceExpectation::default(),
        };
        let long_name = "x".repeat(60);
        let discovery = Discovery {
            hcas: vec![hca(&long_name, LinkLayer::Ethernet, PortState::Active, None)],
            rdma_cm: false,
            warnings: vec![],
        };
        let (inventories, warnings) = build_inventories(&config, &discovery);
        assert!(inventories[0].devices.is_empty());
        assert_eq!(warnings.len(), 1);
    }
}
