//! Skein's lab: a whole multi-node cluster on one Linux host. Every node and every pod is a
//! network namespace; the real `skein-master`, `skein-agent` and `skein-cni` run unchanged
//! against an in-process Kubernetes API (`skein-kube-fake`), with stand-ins for the scheduler,
//! the EndpointSlice, Deployment and Job controllers, the cluster DNS and each node's kubelet,
//! which runs pods through a real containerd per node over CRI and serves device plugins. A test harness: never part of an install. See
//! `docs/lab.md`.

#![forbid(unsafe_code)]

pub mod checks;
pub mod cli;
pub mod cni_runtime;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod deployments;
pub mod devices;
pub mod dns;
pub mod echo;
pub mod endpointslices;
pub mod hold;
pub mod image;
pub mod jobs;
pub mod kubelet;
pub mod layout;
pub mod manifest;
pub mod podspec;
pub mod policy;
pub mod prereq;
pub mod rdma;
pub mod remote_shell;
pub mod scenario;
pub mod scheduler;
pub mod state;
pub mod sys;
pub mod topology;
pub mod watch;
