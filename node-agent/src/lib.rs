//! The Skein node agent.
//!
//! Today it runs the RDMA device plugin ([`deviceplugin`]) and serves the agent's
//! Prometheus metrics ([`metrics`]); the datapath host and the CNI server join later as
//! further tasks of the same runtime.
#![forbid(unsafe_code)]

pub mod deviceplugin;
pub mod metrics;
pub mod translate;
