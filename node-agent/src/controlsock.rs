//! The agent's control socket (`<state-dir>/control.sock`, mode 0600): the datapath's
//! read-only requests — `dump-flows`, `dump-cache`, `dump-conntrack`, `stats`, `trace` —
//! for `skein-agent trace` and friends. Flows are the agent's to install: `reload` is
//! refused here. A trace names the NetworkPolicy and rule that allowed or dropped the
//! packet ([`crate::policyview`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skein_datapath::control::Control;
use tracing::warn;

use crate::node::NodeNetwork;
use crate::policyview::PolicyView;

/// Binds `path` and serves requests on a thread until the process ends.
pub fn serve(path: &Path, control: Arc<Control>) -> std::io::Result<()> {
    serve_with_policies(path, control, None)
}

/// [`serve`], with traces annotated from `net`'s installed view (policy and rule).
pub fn serve_with_policies(path: &Path, control: Arc<Control>, net: Option<Arc<NodeNetwork>>) -> std::io::Result<()> {
    let listener = skein_datapath::io::bind_private_socket(path, "another agent runs with this state directory")?;
    std::thread::Builder::new().name("skein-agent-ctl".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => answer(&control, net.as_deref(), stream),
                Err(e) => warn!(error = %e, "control socket accept failed"),
            }
        }
    })?;
    Ok(())
}

fn answer(control: &Control, net: Option<&NodeNetwork>, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = String::new();
    let reply = match stream.read_to_string(&mut request) {
        Err(e) => format!("error\nreading the request: {e}\n"),
        Ok(_) if request.trim_start().starts_with("reload") => {
            "error\nthe agent installs flows from the master's view; reload is not accepted here\n".to_owned()
        }
        Ok(_) => match control.handle(&request) {
            Ok(body) if request.trim_start().starts_with("trace") => {
                let view = net.and_then(NodeNetwork::view);
                let body = match view {
                    Some(v) => PolicyView::new(&v).annotate_trace(&body),
                    None => body,
                };
                format!("ok\n{body}")
            }
            Ok(body) => format!("ok\n{body}"),
            Err(e) => format!("error\n{e}\n"),
        },
    };
    let _ = stream.write_all(reply.as_bytes());
}

/// Sends `request` to the agent at `path`; returns the answer's body, or the agent's error.
pub fn request(path: &Path, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!("connecting to {} (is skein-agent running with this --state-dir?): {e}", path.display())
    })?;
    stream.write_all(request.as_bytes()).map_err(|e| format!("sending the request: {e}"))?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| format!("reading the answer: {e}"))?;
    match reply.split_once('\n') {
        Some(("ok", body)) => Ok(body.to_owned()),
        Some(("error", body)) => Err(body.trim_end().to_owned()),
        _ => Err(format!("unexpected answer: {reply:?}")),
    }
}
