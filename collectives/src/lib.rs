//! Skein's collectives: barrier, broadcast, scatter, gather, allgather, reduce and allreduce
//! over TCP for allreduce jobs on the cluster network, and the pieces the `skein-allreduce`
//! benchmark is built from.
//!
//! ```no_run
//! use skein_collectives::{Communicator, ReduceOp};
//! # fn main() -> Result<(), skein_collectives::Error> {
//! // SKEIN_RANK, SKEIN_WORLD_SIZE and SKEIN_RENDEZVOUS=host:port (rank 0 listens there),
//! // or SKEIN_SERVICE + SKEIN_WORLD_SIZE in a StatefulSet.
//! let mut comm = Communicator::from_env()?;
//! let mut grads = vec![1.0f32; 1 << 20];
//! comm.allreduce(&mut grads, ReduceOp::Sum)?;
//! # Ok(()) }
//! ```
//!
//! Layout: `wire` (bytes on the wire), `bootstrap` and `config` (environment), `interface`
//! (which interface and transport the ranks use), `transport` and `engine` (sockets and the
//! progress loop), `algorithms` (plans per collective), `comm`
//! (the public communicator), `model` and `reference` (the benchmark's and tests' yardsticks).
//! See `docs/collectives.md` for the design.
#![forbid(unsafe_code)]

pub mod algorithms;
pub mod bootstrap;
pub mod check;
mod comm;
pub mod config;
pub mod datatype;
mod engine;
pub mod error;
pub mod interface;
pub mod model;
pub mod reference;
mod transport;
pub mod wire;

pub use algorithms::{AllgatherAlgorithm, AllreduceAlgorithm, BroadcastAlgorithm, ReduceAlgorithm};
pub use bootstrap::Rendezvous;
pub use comm::{AbortHandle, Communicator};
pub use config::{Config, ConnectMode};
pub use datatype::{DType, Element, ReduceOp};
pub use error::{Error, Result};
