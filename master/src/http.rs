//! `/metrics` (Prometheus text), `/healthz` (the process runs) and `/readyz` (this replica
//! is the leader and has listed every kind: it serves agents). A standby answers 503 on
//! `/readyz`, so a Service in front of the masters sends agents to the leader only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Content type of the OpenMetrics text format that `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` looks at.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// True while leading.
    pub leading: watch::Receiver<bool>,
    /// True once every kind has been listed.
    pub synced: watch::Receiver<bool>,
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!(error = %e, "cannot encode metrics");
    }
    text
}

fn respond(registry: &Registry, readiness: &Readiness, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, render(registry)),
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET, "/readyz") => {
            let (leading, synced) = (*readiness.leading.borrow(), *readiness.synced.borrow());
            match (leading, synced) {
                (true, true) => (StatusCode::OK, TEXT, "ok: leader, synced\n".to_owned()),
                (false, _) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "standby: not the leader\n".to_owned()),
                (true, false) => {
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, "leader, still listing the cluster\n".to_owned())
                }
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, TEXT, "endpoints: /metrics /healthz /readyz\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds `address` for [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, readiness: Readiness, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "serving /metrics, /healthz and /readyz");
    }
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (registry, readiness, shutdown) = (Arc::clone(&registry), readiness.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&registry, &readiness, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = connection => if let Err(e) = result {
                    debug!(%peer, error = %e, "http connection ended with an error");
                },
            }
        });
    }
}
