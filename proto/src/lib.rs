//! Protocol buffers spoken by Skein, and the tonic/prost code generated from them.
//!
//! One Rust module per proto package, nested like the package's path on disk, so that
//! `proto/deviceplugin/v1beta1/api.proto` (package `v1beta1`) is
//! [`deviceplugin::v1beta1`], and `proto/southbound.proto` (package `skein.southbound.v1`) is
//! [`southbound::v1`], and `proto/cri/v1/api.proto` (package `runtime.v1`) is [`cri::v1`]. The code is generated at build time by `build.rs`.
#![forbid(unsafe_code)]

/// The Kubernetes Container Runtime Interface, as kubelet speaks it to a runtime.
pub mod cri {
    /// CRI v1 (package `runtime.v1`): the `RuntimeService` (sandboxes, containers) and
    /// `ImageService` that containerd serves; the subset Skein's lab uses
    /// (`proto/cri/v1/api.proto`).
    pub mod v1 {
        #![allow(missing_docs, clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
        tonic::include_proto!("runtime.v1");
    }
}

/// Kubelet device plugin API.
pub mod deviceplugin {
    /// Kubelet device plugin API v1beta1 (package `v1beta1`): the `Registration` service
    /// kubelet serves on `kubelet.sock`, and the `DevicePlugin` service a plugin serves.
    pub mod v1beta1 {
        #![allow(missing_docs, clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
        tonic::include_proto!("v1beta1");

        /// API version a plugin sends in `RegisterRequest.version`.
        pub const VERSION: &str = "v1beta1";
        /// `Device.health` of a device that can be allocated.
        pub const HEALTHY: &str = "Healthy";
        /// `Device.health` of a device that cannot be allocated (lowers allocatable).
        pub const UNHEALTHY: &str = "Unhealthy";
        /// File name of the kubelet's registration socket in the device plugin directory.
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
        /// Default device plugin directory on a node.
        pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins/";
    }
}

/// Skein's southbound protocol: master ↔ node agent.
pub mod southbound {
    /// The southbound protocol, schema 2 (package `skein.southbound.v1`): the
    /// `Southbound` service the master serves, and the messages of its stream. See
    /// `proto/southbound.proto` for the protocol and its versioning rules.
    pub mod v1 {
        #![allow(missing_docs, clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
        tonic::include_proto!("skein.southbound.v1");

        /// The schema version this build of the protocol speaks (`schema_version` fields).
        pub const SCHEMA_VERSION: u32 = 2;
        /// The oldest schema version a master built from this file can still serve: schema
        /// 1 agents cannot enforce NetworkPolicies.
        pub const MIN_SCHEMA_VERSION: u32 = 2;
    }
}
