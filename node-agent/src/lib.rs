//! The Skein node agent.
//!
//! It runs the node's network — the datapath and its ports ([`node`]), the uplink and
//! management port ([`host`]), the southbound client installing each view of the master
//! ([`agent`], [`translate`]), the CNI server ([`cniserver`]) — and the RDMA device plugin
//! ([`deviceplugin`]), and serves the agent's Prometheus metrics ([`metrics`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cniinstall;
pub mod cniserver;
pub mod controlsock;
pub mod deviceplugin;
pub mod host;
pub mod metrics;
pub mod netmetrics;
pub mod node;
pub mod pods;
pub mod policylog;
pub mod policyview;
pub mod translate;
