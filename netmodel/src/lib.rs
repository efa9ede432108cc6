//! Skein's network model: the pure core of the master.
//!
//! - [`cluster`]: the Kubernetes objects that shape the network, as plain types, and the
//!   [`ClusterState`] store;
//! - [`annotations`]: the annotation contracts (`skein.dev/node-subnets`,
//!   `skein.dev/pod-networks`, `skein.dev/chassis`), parsed from untrusted text;
//! - [`config`] and [`ipam`]: the cluster networks, and node subnet and pod address
//!   allocation, rebuilt from annotations on start;
//! - [`logical`]: the logical ("northbound") network — cluster router, node switches, join
//!   switch, gateway routers, load balancers;
//! - [`southbound`]: what one chassis receives — bindings, typed logical flows, load
//!   balancer tables — and the versioned deltas between views;
//! - [`policy`]: NetworkPolicy → ACLs: validation, security identities, ACL flows;
//! - [`engine`]: the incremental compiler from cluster changes to per-chassis deltas.
//!
//! No I/O, no clock, no async: every function is deterministic. `docs/netmodel.md`
//! describes the topology, the pipeline tables, key allocation and the delta model.

#![forbid(unsafe_code)]

pub mod addr;
pub mod annotations;
pub mod cluster;
mod compile;
pub mod config;
pub mod engine;
pub mod ipam;
pub mod logical;
pub mod policy;
pub mod southbound;

pub use addr::{IpFamily, IpNet, MacAddr};
pub use cluster::{ClusterChange, ClusterState, ObjectKey};
pub use config::NetworkConfig;
pub use engine::{Engine, Issue, Update};
pub use ipam::{Ipam, IpamError};
pub use southbound::{ChassisDelta, ChassisView, LogicalFlow};
