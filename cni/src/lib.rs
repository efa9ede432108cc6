//! Skein's CNI plugin, `skein-cni`, as a library: the CNI types (configuration, results,
//! errors, environment), the protocol spoken with the node agent ([`agent_protocol`]), and
//! the plugin's commands ([`plugin::run`]) over two seams — [`agent_client::AgentTransport`]
//! and [`host::HostNetwork`] — so that the logic is tested and fuzzed without root.
//!
//! See `docs/cni.md` for the plugin's behaviour and what the agent must do.

#![forbid(unsafe_code)]

pub mod addr;
pub mod agent_client;
pub mod agent_protocol;
pub mod args;
pub mod config;
pub mod env;
pub mod error;
pub mod host;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod testing;
pub mod version;

pub use agent_protocol::{AgentRequest, AgentResponse};
pub use config::{ConfList, NetConf};
pub use error::CniError;
pub use plugin::{Outcome, run};
pub use result::CniResult;
pub use version::CniVersion;
