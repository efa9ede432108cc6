//! Skein's userspace datapath, modelled on Open vSwitch's: frames are parsed into a
//! fixed-size [`FlowKey`], looked up in a per-thread microflow (exact-match) cache, then in
//! a shared megaflow cache (tuple space search); a miss is an *upcall* that runs the frame
//! through the OpenFlow-style [`Pipeline`], records every key bit it consulted, installs
//! the resulting megaflow and executes its actions.
//!
//! The pipeline, caches and conntrack are pure code over byte buffers: no sockets, no
//! clock (callers pass `now` in nanoseconds), no async runtime. Port I/O — AF_PACKET
//! rings, the Geneve UDP socket, worker threads — is in [`io`], the one module with
//! system calls.
// Only the port I/O system-call module (`io::sys`) may use `unsafe`.
#![deny(unsafe_code)]

pub mod audit;
pub mod benchkit;
pub mod classifier;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod exec;
pub mod flow;
pub mod flowtext;
pub mod geneve;
pub mod hash;
pub mod io;
pub mod key;
pub mod lb;
pub mod megaflow;
pub mod microflow;
pub mod offload;
pub mod packet;
pub mod parse;
pub mod pcap;
pub mod pipeline;
pub mod responder;

pub use datapath::{Datapath, DatapathConfig, DatapathStats, FlowModReport, OutputSink, Worker};
pub use flow::{Action, Bucket, Flow, FlowMod, Group, GroupKind, Match};
pub use key::{Field, FlowKey};
pub use parse::{HeaderOffsets, parse_frame};
pub use pipeline::{DropReason, Pipeline, PipelineError};
