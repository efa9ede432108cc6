//! Answers to kubelet's GetPreferredAllocation and Allocate calls, computed from a
//! resource's inventory.
//!
//! Pure: no I/O, so the placement rules are tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use skein_proto::deviceplugin::v1beta1 as api;

use super::inventory::ResourceInventory;

/// Environment variable listing the allocated HCAs, e.g. `mlx5_0,mlx5_1`.
pub const ENV_DEVICES: &str = "SKEIN_RDMA_DEVICES";
/// Environment variable listing the network interfaces of the allocated HCAs.
pub const ENV_NETDEVS: &str = "SKEIN_RDMA_NETDEVS";
/// Directory of the RDMA character devices on the host and in the container.
pub const DEV_INFINIBAND: &str = "/dev/infiniband";
/// cgroup permissions given on every RDMA character device.
pub const DEVICE_PERMISSIONS: &str = "rw";

/// A request kubelet should not have sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// The ID is not (or no longer) advertised by this resource.
    #[error("device ID {id:?} is not a device of resource {resource}")]
    UnknownDevice {
        /// The ID.
        id: String,
        /// The resource asked.
        resource: String,
    },
    /// The HCA has no verbs device node, so the container could not use it.
    #[error("device ID {id:?}: HCA {hca} has no uverbs character device")]
    NoVerbsDevice {
        /// The ID.
        id: String,
        /// Its HCA.
        hca: String,
    },
    /// The container asked for no device.
    #[error("container request {container} lists no device IDs")]
    Empty {
        /// Index of the container request.
        container: usize,
    },
    /// `allocation_size` cannot be met.
    #[error(
        "container request {container}: allocation_size {size} is not within 1..={available} \
         (available devices) or is below the {must_include} must-include devices"
    )]
    BadSize {
        /// Index of the container request.
        container: usize,
        /// Requested size.
        size: i32,
        /// Number of distinct available devices.
        available: usize,
        /// Number of distinct must-include devices.
        must_include: usize,
    },
    /// A must-include device is not among the available ones.
    #[error("container request {container}: must-include device {id:?} is not available")]
    MustIncludeUnavailable {
        /// Index of the container request.
        container: usize,
        /// The ID.
        id: String,
    },
}

impl AllocationError {
    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AllocationError::UnknownDevice { .. } => tonic::Status::not_found(self.to_string()),
            AllocationError::NoVerbsDevice { .. } => tonic::Status::failed_precondition(self.to_string()),
            _ => tonic::Status::invalid_argument(self.to_string()),
        }
    }
}

fn dedup(ids: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    ids.iter().map(String::as_str).filter(|id| seen.insert(*id)).collect()
}

/// Picks `size` devices out of `available`, always including `must_include`.
///
/// Rules, in order: every must-include device; then devices on one NUMA node — the node
/// holding most must-include devices, or else the smallest node that can satisfy the
/// whole request alone (keeping bigger nodes free for bigger requests), or else the node
/// with most devices; within a node, slots of HCAs not yet chosen before further slots
/// of a chosen HCA (a container asking for two devices wants two HCAs); then, when one
/// node is not enough, the other nodes by descending size. Ties go by device ID.
pub fn preferred_allocation(
    inventory: &ResourceInventory,
    resource: &str,
    container: usize,
    request: &api::ContainerPreferredAllocationRequest,
) -> Result<Vec<String>, AllocationError> {
    let available = dedup(&request.available_device_i_ds);
    let must_include = dedup(&request.must_include_device_i_ds);
    let size = request.allocation_size;
    let available_set: BTreeSet<&str> = available.iter().copied().collect();
    let lookup = |id: &str| {
        inventory
            .devices
            .get(id)
            .ok_or_else(|| AllocationError::UnknownDevice { id: id.to_owned(), resource: resource.to_owned() })
    };
    for id in &available {
        lookup(id)?;
    }
    for id in &must_include {
        lookup(id)?;
        if !available_set.contains(id) {
            return Err(AllocationError::MustIncludeUnavailable { container, id: (*id).to_owned() });
        }
    }
    let wanted = usize::try_from(size).unwrap_or(0);
    if wanted == 0 || wanted > available.len() || wanted < must_include.len() {
        return Err(AllocationError::BadSize {
            container,
            size,
            available: available.len(),
            must_include: must_include.len(),
        });
    }

    let numa_of = |id: &str| inventory.devices.get(id).and_then(|d| d.hca.numa_node);
    let hca_of = |id: &str| inventory.devices.get(id).map(|d| d.hca.name.clone()).unwrap_or_default();

    let mut chosen: Vec<&str> = must_include.clone();
    let chosen_set: BTreeSet<&str> = chosen.iter().copied().collect();
    let mut remaining: BTreeMap<Option<u32>, Vec<&str>> = BTreeMap::new();
    for id in available.iter().filter(|id| !chosen_set.contains(*id)) {
        remaining.entry(numa_of(id)).or_default().push(id);
    }
    let still_needed = wanted - chosen.len();

    // Order the NUMA groups: the preferred node first, the rest by descending size.
    let mut must_per_node: HashMap<Option<u32>, usize> = HashMap::new();
    for id in &must_include {
        *must_per_node.entry(numa_of(id)).or_default() += 1;
    }
    let preferred = must_per_node
        .iter()
        .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)))
        .map(|(node, _)| *node)
        .or_else(|| {
            remaining
                .iter()
                .filter(|(_, ids)| ids.len() >= still_needed)
                .min_by_key(|(node, ids)| (ids.len(), **node))
                .map(|(node, _)| *node)
        });
    let mut order: Vec<Option<u32>> = remaining.keys().copied().collect();
    order.sort_by_key(|node| (Some(*node) != preferred, std::cmp::Reverse(remaining[node].len()), *node));

    let mut used_hcas: BTreeSet<String> = chosen.iter().map(|id| hca_of(id)).collect();
    for node in order {
        if chosen.len() == wanted {
            break;
        }
        // Two rounds within a node: first one slot per new HCA, then the rest.
        let ids = &remaining[&node];
        let (fresh, repeat): (Vec<&str>, Vec<&str>) = {
            let mut fresh = Vec::new();
            let mut repeat = Vec::new();
            for id in ids {
                if used_hcas.insert(hca_of(id)) {
                    fresh.push(*id);
                } else {
                    repeat.push(*id);
                }
            }
            (fresh, repeat)
        };
        for id in fresh.into_iter().chain(repeat) {
            if chosen.len() == wanted {
                break;
            }
            chosen.push(id);
        }
    }
    Ok(chosen.into_iter().map(str::to_owned).collect())
}

/// What one container gets for `ids`: the character devices of their HCAs (plus
/// `rdma_cm`), read-write, and environment variables naming the HCAs and netdevs.
/// Nothing is mounted.
pub fn container_allocation(
    inventory: &ResourceInventory,
    resource: &str,
    container: usize,
    ids: &[String],
) -> Result<api::ContainerAllocateResponse, AllocationError> {
    if ids.is_empty() {
        return Err(AllocationError::Empty { container });
    }
    let mut hcas = BTreeMap::new();
    for id in ids {
        let device = inventory
            .devices
            .get(id)
            .ok_or_else(|| AllocationError::UnknownDevice { id: id.clone(), resource: resource.to_owned() })?;
        if device.hca.uverbs.is_none() {
            return Err(AllocationError::NoVerbsDevice { id: id.clone(), hca: device.hca.name.clone() });
        }
        hcas.insert(device.hca.name.clone(), &device.hca);
    }

    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    let mut netdevs: BTreeSet<&str> = BTreeSet::new();
    for hca in hcas.values() {
        nodes.extend(hca.uverbs.as_deref());
        nodes.extend(hca.umads.iter().map(String::as_str));
        netdevs.extend(hca.netdevs.iter().map(String::as_str));
    }
    if inventory.rdma_cm {
        nodes.insert("rdma_cm");
    }
    let devices = nodes
        .into_iter()
        .map(|node| {
            let path = format!("{DEV_INFINIBAND}/{node}");
            api::DeviceSpec {
                container_path: path.clone(),
                host_path: path,
                permissions: DEVICE_PERMISSIONS.to_owned(),
            }
        })
        .collect();
    let envs = HashMap::from([
        (ENV_DEVICES.to_owned(), hcas.keys().cloned().collect::<Vec<_>>().join(",")),
        (ENV_NETDEVS.to_owned(), netdevs.into_iter().collect::<Vec<_>>().join(",")),
    ]);
    Ok(api::ContainerAllocateResponse {
        envs,
        mounts: Vec::new(),
        devices,
        annotations: HashMap::new(),
        cdi_devices: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::deviceplugin::inventory::{AdvertisedDevice, Health};
    use crate::deviceplugin::sysfs::Hca;

    fn hca(name: &str, numa: Option<u32>, uverbs: &str) -> Arc<Hca> {
        Arc::new(Hca {
            name: name.into(),
            node_guid: None,
            numa_node: numa,
            vendor: None,
            device: None,
            driver: None,
            ports: vec![],
            netdevs: vec![format!("net_{name}")],
            uverbs: Some(uverbs.into()),
            umads: vec![format!("umad_{uverbs}")],
        })
    }

    // hcas: (name, numa, slots)
    fn inventory(hcas: &[(&str, Option<u32>, u32)]) -> ResourceInventory {
        let mut inv = ResourceInventory { rdma_cm: true, ..Default::default() };
        for (i, (name, numa, slots)) in hcas.iter().enumerate() {
            let h = hca(name, *numa, &format!("uverbs{i}"));
            for s in 0..*slots {
                let id = if *slots == 1 { name.to_string() } else { format!("{name}-slot{s}") };
                inv.devices.insert(id.clone(), AdvertisedDevice { id, hca: Arc::clone(&h), health: Health::Healthy });
            }
        }
        inv
    }

    fn request(available: &[&str], must: &[&str], size: i32) -> api::ContainerPreferredAllocationRequest {
        api::ContainerPreferredAllocationRequest {
            available_device_i_ds: available.iter().map(|s| s.to_string()).collect(),
            must_include_device_i_ds: must.iter().map(|s| s.to_string()).collect(),
            allocation_size: size,
        }
    }

    #[test]
    fn prefers_a_single_numa_node() {
        let inv =
            inventory(&[("a", Some(0), 1), ("b", Some(1), 1), ("c", Some(0), 1), ("d", Some(1), 1), ("e", Some(1), 1)]);
        let all = ["a", "b", "c", "d", "e"];
        // Node 0 holds exactly 2: the smallest node that fits.
        assert_eq!(preferred_allocation(&inv, "r", 0, &request(&all, &[], 2)).unwrap(), ["a", "c"]);
        // Three only fit on node 1.
        assert_eq!(preferred_allocation(&inv, "r", 0, &request(&all, &[], 3)).unwrap(), ["b", "d", "e"]);
        // must-include pins the node.
        assert_eq!(preferred_allocation(&inv, "r", 0, &request(&all, &["d"], 2)).unwrap(), ["d", "b"]);
        assert_eq!(preferred_allocation(&inv, "r", 0, &request(&all, &["c"], 2)).unwrap(), ["c", "a"]);
        // Spill over to the other node when one is not enough.
        let four = preferred_allocation(&inv, "r", 0, &request(&all, &["a"], 4)).unwrap();
        assert_eq!(four, ["a", "c", "b", "d"]);
    }

    #[test]
    fn shared_slots_spread_over_hcas_first() {
        let inv = inventory(&[("x", Some(0), 3), ("y", Some(0), 3), ("z", Some(1), 3)]);
        let ids: Vec<String> = inv.devices.keys().cloned().collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let got = preferred_allocation(&inv, "r", 0, &request(&ids, &[], 2)).unwrap();
        // Node 1 has 3 slots (smallest that fits) but only one HCA; node-fit comes first.
        assert_eq!(got, ["z-slot0", "z-slot1"]);
        let got = preferred_allocation(&inv, "r", 0, &request(&ids, &["x-slot1"], 2)).unwrap();
        assert_eq!(got, ["x-slot1", "y-slot0"]);
    }

    #[test]
    fn preferred_allocation_rejects_bad_requests() {
        let inv = inventory(&[("a", Some(0), 1), ("b", None, 1)]);
        assert!(matches!(
            preferred_allocation(&inv, "r", 0, &request(&["a", "zz"], &[], 1)),
            Err(AllocationError::UnknownDevice { id, .. }) if id == "zz"
        ));
        assert!(matches!(
            preferred_allocation(&inv, "r", 0, &request(&["a"], &["b"], 1)),
            Err(AllocationError::MustIncludeUnavailable { .. })
        ));
        for size in [0, -1, 3] {
            assert!(matches!(
                preferred_allocation(&inv, "r", 2, &request(&["a", "b"], &[], size)),
                Err(AllocationError::BadSize { container: 2, .. })
            ));
        }
        assert_eq!(preferred_allocation(&inv, "r", 0, &request(&["b", "a", "b"], &[], 2)).unwrap().len(), 2);
    }

    #[test]
    fn allocation_lists_char_devices_and_env() {
        let inv = inventory(&[("mlx5_0", Some(0), 2), ("mlx5_1", Some(1), 1)]);
        let response =
            container_allocation(&inv, "r", 0, &["mlx5_0-slot1".into(), "mlx5_1".into(), "mlx5_0-slot0".into()])
                .unwrap();
        assert_eq!(response.envs[ENV_DEVICES], "mlx5_0,mlx5_1");
        assert_eq!(response.envs[ENV_NETDEVS], "net_mlx5_0,net_mlx5_1");
        let paths: Vec<&str> = response.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/infiniband/rdma_cm",
                "/dev/infiniband/umad_uverbs0",
                "/dev/infiniband/umad_uverbs1",
                "/dev/infiniband/uverbs0",
                "/dev/infiniband/uverbs1"
            ]
        );
        assert!(response.devices.iter().all(|d| d.permissions == "rw" && d.container_path == d.host_path));
        assert!(response.mounts.is_empty());
        assert!(matches!(
            container_allocation(&inv, "r", 0, &["nope".into()]),
            Err(AllocationError::UnknownDevice { .. })
        ));
        assert!(matches!(container_allocation(&inv, "r", 3, &[]), Err(AllocationError::Empty { container: 3 })));
    }
}
