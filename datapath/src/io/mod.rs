//! Port I/O: the switch's contact with real interfaces and sockets. Veth host ends are
//! opened through AF_PACKET with a receive ring and virtio-net headers
//! ([`afpacket`]); the Geneve tunnel endpoint is a UDP socket ([`udp`]); worker threads
//! move batches between them and the datapath ([`switch`]). All `unsafe` code of the
//! crate is in [`sys`].

pub mod afpacket;
pub mod switch;
pub mod sys;
pub mod udp;

pub use afpacket::{AfPacketPort, PortConfig, PortError, RingKind};
pub use switch::{PortSpec, PortStats, Switch, SwitchConfig, SwitchStats, now_ns};
