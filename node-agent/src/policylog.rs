//! The audit log of connections NetworkPolicy denied: what the datapath's `log` actions
//! recorded (every denial carries one, rate-limited in the datapath, like OVN's ACL
//! meters), collected once a second and written as one structured line per packet under
//! the `skein::policy_audit` target, naming the policies, with how many were left out.
//! Off by default (`--policy-audit-log-rate`).

use std::sync::Arc;
use std::time::Duration;

use skein_datapath::audit::AuditConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::node::NodeNetwork;
use crate::policyview::PolicyView;

/// How often the records are collected.
const INTERVAL: Duration = Duration::from_secs(1);

/// Sets the datapath's audit rate to `per_second` (0: record nothing) and, unless 0,
/// writes what it records until `shutdown`.
pub fn start(net: Arc<NodeNetwork>, per_second: u32, shutdown: CancellationToken) -> std::io::Result<()> {
    net.datapath().set_audit(AuditConfig {
        per_second,
        burst: per_second.saturating_mul(5).max(1),
        ..AuditConfig::default()
    });
    if per_second == 0 {
        return Ok(());
    }
    std::thread::Builder::new().name("skein-agent-audit".into()).spawn(move || {
        let mut view: Option<(u64, PolicyView)> = None;
        while !shutdown.is_cancelled() {
            std::thread::sleep(INTERVAL);
            let batch = net.datapath().take_audit();
            if batch.records.is_empty() && batch.suppressed == 0 {
                continue;
            }
            let current = net.installed().borrow().version.unwrap_or(0);
            if view.as_ref().is_none_or(|(v, _)| *v != current) {
                view = net.view().map(|v| (current, PolicyView::new(&v)));
            }
            for r in &batch.records {
                let denial = view.as_ref().and_then(|(_, v)| v.denial_logged(r));
                let (direction, policies) = match denial {
                    Some(d) => (
                        match d.direction {
                            skein_netmodel::cluster::PolicyType::Ingress => "ingress",
                            skein_netmodel::cluster::PolicyType::Egress => "egress",
                        },
                        d.policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                    ),
                    None => ("unknown", String::new()),
                };
                let addr = |a: Option<std::net::IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
                info!(
                    target: "skein::policy_audit",
                    verdict = "deny",
                    direction,
                    policies = %policies,
                    src = %addr(r.src),
                    dst = %addr(r.dst),
                    proto = r.proto,
                    sport = r.sport,
                    dport = r.dport,
                    in_port = r.in_port,
                    "connection denied by NetworkPolicy"
                );
            }
            if batch.suppressed > 0 {
                warn!(
                    target: "skein::policy_audit",
                    suppressed = batch.suppressed,
                    per_second,
                    "denied packets over the audit log's rate were not logged"
                );
            }
        }
    })?;
    Ok(())
}
