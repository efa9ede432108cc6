//! The one error type every fallible call in this crate returns.
//! Each variant's message names what was wrong (the variable, the peer, the value) so that an
//! operator can act on it without reading the source.

use std::time::Duration;

use crate::wire::WireError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in bootstrap or in a collective.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting (environment variable, flag or `Config` field) has a value that cannot be used.
    #[error("invalid {name}={value:?}: {reason}")]
    Config {
        /// Name of the variable or field, e.g. `SKEIN_RANK`.
        name: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A required setting is absent.
    #[error("missing {name}: {hint}")]
    MissingConfig {
        /// Name of the variable, e.g. `SKEIN_WORLD_SIZE`.
        name: String,
        /// What to set and why.
        hint: String,
    },
    /// Bootstrap (rendezvous, address exchange, peer connection set-up) failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// The rendezvous (rank 0) refused this rank, e.g. because its rank was already taken.
    #[error("rendezvous rejected this rank: {0}")]
    Rejected(String),
    /// A socket operation with a peer failed.
    #[error("{what} with peer rank {peer}: {source}")]
    Io {
        /// The peer's rank.
        peer: usize,
        /// What was being done (e.g. "send during allreduce").
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A local socket operation not tied to one peer failed (bind, listen, poll).
    #[error("{what}: {source}")]
    LocalIo {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A peer closed its connection while this rank still expected data from it: the peer
    /// process died, or it failed and shut its connections down.
    #[error("peer rank {peer} closed the connection during {during}")]
    PeerClosed {
        /// The peer's rank.
        peer: usize,
        /// The collective (or bootstrap step) that was running.
        during: String,
    },
    /// No progress was made for the whole timeout.
    #[error("timed out after {timeout:?} without progress waiting for peer rank {peer} during {during}")]
    Timeout {
        /// The peer this rank was waiting on.
        peer: usize,
        /// The collective that was running.
        during: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A peer sent bytes that do not decode as the protocol requires.
    #[error("malformed message from peer rank {peer} during {during}: {source}")]
    Wire {
        /// The peer's rank.
        peer: usize,
        /// The collective that was running.
        during: String,
        /// What was wrong with the bytes.
        source: WireError,
    },
    /// A peer sent a well-formed message for a different collective call than this rank is
    /// running: the ranks' programs disagree (different lengths, ops, types, roots or algorithms).
    #[error("peer rank {peer} is out of step: it sent {got}, this rank expected {expected}")]
    Mismatch {
        /// The peer's rank.
        peer: usize,
        /// What this rank expected, in words.
        expected: String,
        /// What arrived, in words.
        got: String,
    },
    /// The caller passed arguments that cannot work (buffer lengths, root out of range).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier collective on this communicator failed; its connections were shut down so
    /// that every peer fails fast too, and the communicator cannot be used again.
    #[error("communicator is unusable after an earlier failure: {0}")]
    Poisoned(String),
    /// The communicator was aborted through its [`AbortHandle`](crate::AbortHandle).
    #[error("communicator aborted")]
    Aborted,
}

impl Error {
    pub(crate) fn config(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Error::Config { name: name.to_string(), value: value.to_string(), reason: reason.into() }
    }

    pub(crate) fn io(peer: usize, what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { peer, what: what.into(), source }
    }

    pub(crate) fn local(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::LocalIo { what: what.into(), source }
    }
}
