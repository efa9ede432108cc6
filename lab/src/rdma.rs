//! Each lab node's RDMA hardware, synthetic: a sysfs tree and a `/dev` tree holding two HCAs
//! on two NUMA nodes — `mlx5_0` (InfiniBand, NUMA 0, `ib0`, `uverbs0`, `umad0`) and `mlx5_1`
//! (RoCE, NUMA 1, `ens2f0`, `uverbs1`) — plus `rdma_cm`, the same node the device plugin's
//! tests use (`node-agent/tests/common`). The node's `skein-agent` runs its device plugin on it
//! (`--sysfs-root`, `--dev-root`), so the lab's kubelet meets the real plugin.
//!
//! The device nodes are real character devices with the kernel's numbers (uverbs 231:192+N,
//! umad 231:N, rdma_cm a misc device), because the container runtime refuses to hand a
//! container anything else; no driver backs them here, so opening one fails (ENXIO), which
//! nothing in the lab does: the collectives run TCP.

use std::path::{Path, PathBuf};

use crate::sys;

/// The major number of the InfiniBand user-space devices (`uverbsN`, `umadN`).
pub const IB_MAJOR: u32 = 231;
/// The minor number of `uverbs0` (`uverbsN` is this + N).
pub const UVERBS_MINOR_BASE: u32 = 192;
/// The misc major, and the minor given to `rdma_cm` here (the kernel assigns it dynamically).
pub const RDMA_CM: (u32, u32) = (10, 59);

/// One synthetic HCA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hca {
    /// `mlx5_0`.
    pub name: &'static str,
    /// Its NUMA node.
    pub numa_node: i32,
    /// `InfiniBand` or `Ethernet` (RoCE).
    pub link_layer: &'static str,
    /// Its network interface.
    pub netdev: &'static str,
    /// N of `uverbsN`.
    pub uverbs: u32,
    /// N of `umadN` (InfiniBand only).
    pub umad: Option<u32>,
    /// `node_guid`.
    pub node_guid: &'static str,
}

/// The two HCAs every lab node has.
pub const HCAS: [Hca; 2] = [
    Hca {
        name: "mlx5_0",
        numa_node: 0,
        link_layer: "InfiniBand",
        netdev: "ib0",
        uverbs: 0,
        umad: Some(0),
        node_guid: "0002:c903:0031:7a40",
    },
    Hca {
        name: "mlx5_1",
        numa_node: 1,
        link_layer: "Ethernet",
        netdev: "ens2f0",
        uverbs: 1,
        umad: None,
        node_guid: "b859:9f03:00d4:1e2a",
    },
];

/// A node's synthetic trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaTree {
    /// What the agent takes as `/sys`.
    pub sysfs: PathBuf,
    /// What the agent takes as `/dev`, and the kubelet overlays on the host's `/dev`.
    pub dev: PathBuf,
}

impl RdmaTree {
    /// The trees under `dir`.
    pub fn under(dir: &Path) -> RdmaTree {
        RdmaTree { sysfs: dir.join("sys"), dev: dir.join("dev") }
    }

    /// The files to write: (path, content) for every sysfs attribute.
    pub fn attributes(&self) -> Vec<(PathBuf, String)> {
        let mut files = Vec::new();
        for hca in &HCAS {
            let dir = self.sysfs.join("class/infiniband").join(hca.name);
            files.push((dir.join("node_guid"), format!("{}\n", hca.node_guid)));
            files.push((dir.join("ports/1/state"), "4: ACTIVE\n".into()));
            files.push((dir.join("ports/1/link_layer"), format!("{}\n", hca.link_layer)));
            files.push((dir.join("device/numa_node"), format!("{}\n", hca.numa_node)));
            files.push((dir.join("device/vendor"), "0x15b3\n".into()));
            files.push((dir.join("device/device"), "0x1017\n".into()));
        }
        files
    }

    /// The device nodes: (path, major, minor).
    pub fn device_nodes(&self) -> Vec<(PathBuf, u32, u32)> {
        let ib = self.dev.join("infiniband");
        let mut nodes = vec![(ib.join("rdma_cm"), RDMA_CM.0, RDMA_CM.1)];
        for hca in &HCAS {
            nodes.push((ib.join(format!("uverbs{}", hca.uverbs)), IB_MAJOR, UVERBS_MINOR_BASE + hca.uverbs));
            if let Some(umad) = hca.umad {
                nodes.push((ib.join(format!("umad{umad}")), IB_MAJOR, umad));
            }
        }
        nodes
    }

    /// Writes both trees (replacing earlier ones). Needs root for the device nodes.
    pub fn create(&self) -> std::io::Result<()> {
        for dir in [&self.sysfs, &self.dev] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
        }
        for (path, content) in self.attributes() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)?;
        }
        for hca in &HCAS {
            let device = self.sysfs.join("class/infiniband").join(hca.name).join("device");
            // Discovery reads the driver's name from the link's target, as on a real PCI device.
            std::os::unix::fs::symlink("../../../../bus/pci/drivers/mlx5_core", device.join("driver"))?;
            std::fs::create_dir_all(device.join("net").join(hca.netdev))?;
            std::fs::create_dir_all(device.join(format!("infiniband_verbs/uverbs{}", hca.uverbs)))?;
            if let Some(umad) = hca.umad {
                std::fs::create_dir_all(device.join(format!("infiniband_mad/umad{umad}")))?;
            }
        }
        for (path, major, minor) in self.device_nodes() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            sys::run(
                "mknod",
                [
                    "-m".as_ref(),
                    "0666".as_ref(),
                    path.as_os_str(),
                    "c".as_ref(),
                    major.to_string().as_ref(),
                    minor.to_string().as_ref(),
                ],
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hcas_on_two_numa_nodes_with_their_device_nodes() {
        let tree = RdmaTree::under(Path::new("/x/rdma"));
        let attributes = tree.attributes();
        let numa: Vec<&str> =
            attributes.iter().filter(|(p, _)| p.ends_with("device/numa_node")).map(|(_, c)| c.trim()).collect();
        assert_eq!(numa, ["0", "1"]);
        assert!(attributes.iter().any(|(p, c)| p.ends_with("mlx5_1/ports/1/link_layer") && c == "Ethernet\n"));
        let nodes: Vec<(String, u32, u32)> =
            tree.device_nodes().into_iter().map(|(p, a, b)| (p.display().to_string(), a, b)).collect();
        assert_eq!(
            nodes,
            [
                ("/x/rdma/dev/infiniband/rdma_cm".to_string(), 10, 59),
                ("/x/rdma/dev/infiniband/uverbs0".to_string(), 231, 192),
                ("/x/rdma/dev/infiniband/umad0".to_string(), 231, 0),
                ("/x/rdma/dev/infiniband/uverbs1".to_string(), 231, 193),
            ]
        );
    }
}
