//! The southbound protocol, typed: conversions between `skein-netmodel`'s southbound view
//! (what the master compiles) and the `skein.southbound.v1` wire messages (`skein-proto`),
//! in both directions, and the agent's side of the stream.
//!
//! - [`convert`]: model ↔ wire. Wire → model validates untrusted input and names the
//!   offending field;
//! - [`follower`]: a chassis's view, kept up to date message by message (pure);
//! - [`client`]: the agent's gRPC client (register, follow, ack, resync, reconnect);
//! - [`tls`]: the agent's TLS settings and the PEM checks the master shares.
//!
//! This crate exists so that the master and the agent share one implementation without
//! depending on each other, and without `skein-proto` depending on `skein-netmodel`
//! (`docs/master.md`, "Where the conversions live").

#![forbid(unsafe_code)]

pub mod client;
pub mod convert;
pub mod follower;
pub mod tls;

pub use client::{AgentClient, ClientEvent, ClientSettings, Installer, Registration, TokenSource};
pub use convert::ConvertError;
pub use follower::{Applied, FollowError, Follower};
pub use tls::{ClientTls, TlsIdentity};
