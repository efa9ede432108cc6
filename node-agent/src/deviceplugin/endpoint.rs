//! One resource's plugin endpoint: its unix socket in the device plugin directory, the
//! gRPC server on it, and its registration with kubelet — kept alive across kubelet
//! restarts (which delete the socket) and agent restarts (which leave a stale one).
//!
//! Serve first, then register: kubelet connects back as soon as Register returns.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skein_proto::deviceplugin::v1beta1 as api;
use skein_proto::deviceplugin::v1beta1::device_plugin_server::DevicePluginServer;
use skein_proto::deviceplugin::v1beta1::registration_client::RegistrationClient;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Server};
use tracing::{debug, info, warn};

use super::inventory::ResourceInventory;
use super::metrics::{DevicePluginMetrics, ResourceLabels};
use super::service::{DevicePluginService, plugin_options};

/// Longest wait between registration attempts while kubelet's socket exists but
/// refuses; short enough to stay well within a second of kubelet coming back.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_millis(800);
const FIRST_REGISTER_BACKOFF: Duration = Duration::from_millis(100);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// File name of the plugin socket for `resource`: `skein-<domain>_<name>.sock`, e.g.
/// `skein-skein.dev_rdma.sock`. The domain (a DNS subdomain) has no `_`, so the first `_`
/// stands for the `/` and two resources never share a socket.
pub fn socket_file_name(resource: &str) -> String {
    let safe: String = resource
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    format!("skein-{safe}.sock")
}

/// Identity of a file. A deleted and recreated socket may get the freed inode number
/// back, so the change time is part of the identity too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
    })
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The kubelet socket path is not valid UTF-8 (tonic takes a URI).
    #[error("kubelet socket path {0:?} is not UTF-8")]
    Path(PathBuf),
    /// Could not connect to kubelet.
    #[error("cannot connect to kubelet at {path}: {reason}")]
    Connect {
        /// The socket.
        path: String,
        /// The transport error.
        reason: String,
    },
    /// Kubelet answered with an error.
    #[error("kubelet refused the registration: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("kubelet did not answer within {0:?}")]
    Timeout(Duration),
}

/// Opens a gRPC channel over the unix socket at `path`.
pub async fn connect_unix(path: &Path) -> Result<tonic::transport::Channel, RegisterError> {
    let text = path.to_str().ok_or_else(|| RegisterError::Path(path.to_owned()))?;
    let endpoint = Endpoint::from_shared(format!("unix://{text}"))
        .map_err(|e| RegisterError::Connect { path: text.to_owned(), reason: e.to_string() })?;
    endpoint
        .connect_timeout(REGISTER_TIMEOUT)
        .connect()
        .await
        .map_err(|e| RegisterError::Connect { path: text.to_owned(), reason: format!("{e:?}") })
}

/// Sends `request` to kubelet's Registration service at `kubelet_socket`.
pub async fn register(kubelet_socket: &Path, request: api::RegisterRequest) -> Result<(), RegisterError> {
    let call = async {
        let channel = connect_unix(kubelet_socket).await?;
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map(|_| ())
            .map_err(|status| RegisterError::Refused(status.message().to_owned()))
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call).await.map_err(|_| RegisterError::Timeout(REGISTER_TIMEOUT))?
}

/// Everything an endpoint needs.
pub struct EndpointSettings {
    /// Extended resource name.
    pub resource: String,
    /// Device plugin directory.
    pub plugin_dir: PathBuf,
    /// Kubelet's registration socket.
    pub kubelet_socket: PathBuf,
    /// How often the sockets are checked.
    pub check_interval: Duration,
}

struct Serving {
    id: FileId,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Serving {
    async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "plugin server ended with an error"),
            Err(e) => warn!(error = %e, "plugin server task failed"),
        }
    }
}

fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is a directory", path.display())))
        }
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                warn!(path = %path.display(), "replacing a non-socket file at the plugin socket path");
            }
            std::fs::remove_file(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs the endpoint until `shutdown`; removes its socket on the way out.
pub async fn run_endpoint(
    settings: EndpointSettings,
    inventory: watch::Receiver<Arc<ResourceInventory>>,
    metrics: DevicePluginMetrics,
    shutdown: CancellationToken,
) {
    let socket_name = socket_file_name(&settings.resource);
    let socket_path = settings.plugin_dir.join(&socket_name);
    let labels = ResourceLabels { resource: settings.resource.clone() };
    let request = api::RegisterRequest {
        version: api::VERSION.to_owned(),
        endpoint: socket_name.clone(),
        resource_name: settings.resource.clone(),
        options: Some(plugin_options()),
    };
    let resource = settings.resource.as_str();

    let mut serving: Option<Serving> = None;
    // The kubelet socket we last registered with; a new inode means a new kubelet.
    let mut registered_with: Option<FileId> = None;
    let mut next_attempt = Instant::now();
    let mut backoff = FIRST_REGISTER_BACKOFF;
    let mut last_failure: Option<(FileId, String)> = None;
    let mut waiting_logged = false;
    let mut last_serve_error: Option<String> = None;
    let mut ticker = tokio::time::interval(settings.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }

        // 1. Our socket: (re)serve when it is gone, replaced, or the server died.
        let current = file_id(&socket_path);
        let healthy = serving.as_ref().is_some_and(|s| Some(s.id) == current && !s.task.is_finished());
        if !healthy {
            if let Some(old) = serving.take() {
                info!(resource, socket = %socket_path.display(), "plugin socket removed (kubelet restart?); serving again");
                old.stop().await;
            }
            registered_with = None;
            match serve(&socket_path, resource, &inventory, &metrics).await {
                Ok(new) => {
                    serving = Some(new);
                    last_serve_error = None;
                }
                Err(e) => {
                    // Retried on every check; logged once per distinct problem.
                    let message = e.to_string();
                    if last_serve_error.as_ref() != Some(&message) {
                        warn!(resource, socket = %socket_path.display(), error = %message, "cannot serve the plugin socket; retrying");
                        last_serve_error = Some(message);
                    }
                    continue;
                }
            }
        }

        // 2. Registration: once per kubelet socket instance.
        let Some(kubelet) = file_id(&settings.kubelet_socket) else {
            if registered_with.take().is_some() || !waiting_logged {
                info!(
                    resource,
                    kubelet_socket = %settings.kubelet_socket.display(),
                    "waiting for kubelet's registration socket"
                );
                waiting_logged = true;
            }
            continue;
        };
        waiting_logged = false;
        // A new kubelet socket is tried at once, whatever the backoff for the old one.
        let new_kubelet = last_failure.as_ref().is_some_and(|(failed, _)| *failed != kubelet);
        if registered_with == Some(kubelet) || (Instant::now() < next_attempt && !new_kubelet) {
            continue;
        }
        if registered_with.is_some() {
            info!(resource, "kubelet socket recreated; registering again");
        }
        match register(&settings.kubelet_socket, request.clone()).await {
            Ok(()) => {
                info!(resource, endpoint = %socket_name, "registered with kubelet");
                metrics.registrations.get_or_create(&labels).inc();
                registered_with = Some(kubelet);
                backoff = FIRST_REGISTER_BACKOFF;
                last_failure = None;
            }
            Err(e) => {
                metrics.registration_failures.get_or_create(&labels).inc();
                let message = e.to_string();
                // Log each new failure once, not every retry.
                if last_failure.as_ref() != Some(&(kubelet, message.clone())) {
                    warn!(resource, error = %message, "registration with kubelet failed; retrying");
                    backoff = FIRST_REGISTER_BACKOFF;
                }
                last_failure = Some((kubelet, message));
                next_attempt = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_REGISTER_BACKOFF);
            }
        }
    }

    if let Some(serving) = serving.take() {
        let ours = serving.id;
        serving.stop().await;
        // Only remove the socket if it is still ours: a newer agent may own the path.
        if file_id(&socket_path) == Some(ours)
            && let Err(e) = std::fs::remove_file(&socket_path)
        {
            warn!(resource, socket = %socket_path.display(), error = %e, "cannot remove plugin socket");
        }
    }
    info!(resource, "device plugin endpoint stopped");
}

async fn serve(
    socket_path: &Path,
    resource: &str,
    inventory: &watch::Receiver<Arc<ResourceInventory>>,
    metrics: &DevicePluginMetrics,
) -> io::Result<Serving> {
    remove_stale(socket_path)?;
    let listener = UnixListener::bind(socket_path)?;
    let id = file_id(socket_path)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "socket vanished right after bind"))?;
    let stop = CancellationToken::new();
    let service = DevicePluginService::new(resource.to_owned(), inventory.clone(), metrics.clone(), stop.clone());
    let server_stop = stop.clone();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(DevicePluginServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), server_stop.cancelled_owned())
            .await
    });
    info!(resource, socket = %socket_path.display(), "serving device plugin");
    Ok(Serving { id, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        assert_eq!(socket_file_name("skein.dev/rdma"), "skein-skein.dev_rdma.sock");
        assert_eq!(socket_file_name("rdma/hca_shared"), "skein-rdma_hca_shared.sock");
    }
}
