//! The Skein master as a library: the `skein-master` binary, its tests and its bench drive
//! the same code.
//!
//! ```text
//! watch (kube-runtime) ─▶ controller ─▶ Engine (skein-netmodel) ─▶ Shared ─▶ gRPC streams ─▶ agents
//!                             │                                          ◀── acks
//!                             └─▶ IPAM ─▶ annotation writes (leader only)
//! ```
//!
//! - [`objects`]: Kubernetes objects → netmodel cluster types (untrusted input);
//! - [`watch`]: one watcher per kind;
//! - [`controller`]: batches → engine; allocation and annotations; Events;
//! - [`annotate`]: conflict-safe annotation patches with retries;
//! - [`state`]: the engine and the per-chassis fan-out, under one lock;
//! - [`grpc`]: the southbound service; [`auth`]: who an agent is (TokenReview); [`tls`]:
//!   its TLS; [`pki`]: the master's CA, certificate and signing key in a Secret;
//!   [`signing`]: which pod annotations the master wrote;
//! - [`leader`]: leader election on a Lease;
//! - [`metrics`], [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`dump`]: `skein-master dump`;
//! - [`master`]: wiring; [`cli`]: flags.
//!
//! `docs/master.md` describes the design, the protocol and what is not done.

#![forbid(unsafe_code)]

pub mod annotate;
pub mod auth;
pub mod cli;
pub mod controller;
pub mod dump;
pub mod grpc;
pub mod http;
pub mod leader;
pub mod master;
pub mod metrics;
pub mod objects;
pub mod pki;
pub mod signing;
pub mod state;
pub mod tls;
pub mod watch;

pub use master::{Master, MasterError, MasterSettings};
