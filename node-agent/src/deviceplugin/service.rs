//! The `v1beta1.DevicePlugin` gRPC service for one resource: kubelet's view of the
//! resource's inventory (ListAndWatch) and its allocation calls.
//!
//! The inventory arrives on a watch channel fed by the discovery loop.

use std::sync::Arc;

use skein_proto::deviceplugin::v1beta1 as api;
use skein_proto::deviceplugin::v1beta1::device_plugin_server::DevicePlugin;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::allocation::{container_allocation, preferred_allocation};
use super::inventory::ResourceInventory;
use super::metrics::{DevicePluginMetrics, ResourceLabels};

/// The service for one resource.
#[derive(Clone)]
pub struct DevicePluginService {
    resource: String,
    inventory: watch::Receiver<Arc<ResourceInventory>>,
    metrics: DevicePluginMetrics,
    // Cancelled when this server instance stops, so that ListAndWatch streams end and
    // a graceful shutdown does not wait for kubelet to hang up.
    stop: CancellationToken,
}

impl DevicePluginService {
    /// A service answering for `resource` from `inventory`.
    pub fn new(
        resource: String,
        inventory: watch::Receiver<Arc<ResourceInventory>>,
        metrics: DevicePluginMetrics,
        stop: CancellationToken,
    ) -> DevicePluginService {
        DevicePluginService { resource, inventory, metrics, stop }
    }

    fn labels(&self) -> ResourceLabels {
        ResourceLabels { resource: self.resource.clone() }
    }

    fn refuse(&self, call: &str, status: Status) -> Status {
        warn!(resource = %self.resource, call, error = %status.message(), "refused kubelet request");
        self.metrics.allocation_errors.get_or_create(&self.labels()).inc();
        status
    }
}

/// Options this plugin registers with: GetPreferredAllocation is available,
/// PreStartContainer is not needed.
pub fn plugin_options() -> api::DevicePluginOptions {
    api::DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
}

#[tonic::async_trait]
impl DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<api::ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _request: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut inventory = self.inventory.clone();
        let stop = self.stop.clone();
        let resource = self.resource.clone();
        info!(%resource, "kubelet opened ListAndWatch");
        tokio::spawn(async move {
            let mut last_sent: Option<Vec<api::Device>> = None;
            loop {
                let devices = inventory.borrow_and_update().kubelet_devices();
                // The inventory also changes for reasons kubelet does not see (netdev
                // names, char devices); send only when the list itself changed.
                if last_sent.as_ref() != Some(&devices) {
                    debug!(%resource, devices = devices.len(), "sending device list");
                    let response = api::ListAndWatchResponse { devices: devices.clone() };
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                    last_sent = Some(devices);
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tx.closed() => break,
                    changed = inventory.changed() => if changed.is_err() { break },
                }
            }
            debug!(%resource, "ListAndWatch stream ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let inventory = Arc::clone(&self.inventory.borrow());
        let mut container_responses = Vec::new();
        for (index, container) in request.into_inner().container_requests.iter().enumerate() {
            let ids = preferred_allocation(&inventory, &self.resource, index, container)
                .map_err(|e| self.refuse("GetPreferredAllocation", e.to_status()))?;
            debug!(resource = %self.resource, container = index, ids = ?ids, "preferred allocation");
            container_responses.push(api::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(api::PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(
        &self,
        request: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let inventory = Arc::clone(&self.inventory.borrow());
        let mut container_responses = Vec::new();
        for (index, container) in request.into_inner().container_requests.iter().enumerate() {
            let response = container_allocation(&inventory, &self.resource, index, &container.devices_ids)
                .map_err(|e| self.refuse("Allocate", e.to_status()))?;
            info!(
                resource = %self.resource,
                container = index,
                ids = ?container.devices_ids,
                devices = %response.envs.get(super::allocation::ENV_DEVICES).map_or("", String::as_str),
                "allocated RDMA devices"
            );
            container_responses.push(response);
        }
        self.metrics.allocations.get_or_create(&self.labels()).inc_by(container_responses.len() as u64);
        Ok(Response::new(api::AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        // Registered with pre_start_required = false; nothing to prepare.
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
