//! Leader election on a `coordination.k8s.io/v1` Lease, written with `resourceVersion`
//! preconditions (client-go's algorithm): the holder renews every `retry_period`; a
//! candidate takes the lease over once it has seen no renewal for `lease_duration`
//! (measured on its own clock, from when it last saw the record change, so clock skew
//! between replicas does not matter); a leader that cannot renew for `renew_deadline`
//! steps down. Every write is a replace or create that fails on a concurrent change, so two
//! candidates never both win.
//!
//! Fencing: the renew deadline is counted from the *start* of the last successful renewal
//! (the API server may have written it at any moment after that), and every attempt is cut
//! off at the deadline, so a renewal that hangs cannot keep the leader leading. Since the
//! deadline is shorter than the lease duration, the leader stops writing (`leading` goes
//! false) before a standby can see the lease expire and start writing itself.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::MasterMetrics;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (< lease duration).
    pub renew_deadline: Duration,
    /// Interval between attempts.
    pub retry_period: Duration,
}

/// Why leading ended.
#[derive(Debug, Error)]
pub enum LeaderError {
    /// The lease could not be renewed within the renew deadline, or another replica holds
    /// it now.
    #[error("lost the leader lease {namespace}/{name}: {reason}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Why.
        reason: String,
    },
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// Runs the election until `shutdown`: `leading` is set true when this replica acquires
/// the lease; if it then loses it, `leading` goes false and an error is returned (the
/// caller should exit, as client-go's users do). On shutdown a held lease is released so
/// that the standby takes over at once.
pub async fn run(
    client: kube::Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    metrics: MasterMetrics,
    shutdown: CancellationToken,
) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewal = Instant::now();
    loop {
        let is_leader = *leading.borrow();
        let attempt_started = Instant::now();
        let attempt = try_acquire_or_renew(&api, &settings, &mut observed);
        let result = if is_leader {
            // The leader's attempt may not outlive its deadline: a hung request would
            // otherwise keep it writing after the standby took over.
            let deadline = tokio::time::Instant::from_std(last_renewal + settings.renew_deadline);
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    leading.send_replace(false);
                    metrics.is_leader.set(0);
                    metrics.lease_renewal_deadline_missed.inc();
                    return Err(LeaderError::Lost {
                        namespace: settings.namespace.clone(),
                        name: settings.name.clone(),
                        reason: format!(
                            "a renewal did not complete within the renew deadline {:?}",
                            settings.renew_deadline
                        ),
                    });
                }
            }
        } else {
            // A candidate's attempt is bounded too, so that it keeps observing the lease.
            match tokio::time::timeout(settings.renew_deadline, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    warn!(lease = %settings.name, "leader lease request did not complete; retrying");
                    Ok(false)
                }
            }
        };
        match result {
            Ok(true) => {
                last_renewal = attempt_started;
                if !is_leader {
                    info!(lease = %settings.name, identity = %settings.identity, "acquired the leader lease");
                    metrics.is_leader.set(1);
                    metrics.leader_transitions.inc();
                    leading.send_replace(true);
                }
            }
            Ok(false) if is_leader => {
                leading.send_replace(false);
                metrics.is_leader.set(0);
                return Err(LeaderError::Lost {
                    namespace: settings.namespace.clone(),
                    name: settings.name.clone(),
                    reason: "another replica holds it".into(),
                });
            }
            Ok(false) => {}
            Err(e) => {
                warn!(lease = %settings.name, error = %e, "leader lease request failed");
                if is_leader && last_renewal.elapsed() > settings.renew_deadline {
                    leading.send_replace(false);
                    metrics.is_leader.set(0);
                    metrics.lease_renewal_deadline_missed.inc();
                    return Err(LeaderError::Lost {
                        namespace: settings.namespace.clone(),
                        name: settings.name.clone(),
                        reason: format!("not renewed within {:?}: {e}", settings.renew_deadline),
                    });
                }
            }
        }
        // A leader wakes up by its deadline at the latest, so that it never leads past it.
        let mut wake = Instant::now() + settings.retry_period;
        if *leading.borrow() {
            wake = wake.min(last_renewal + settings.renew_deadline);
        }
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            () = shutdown.cancelled() => {
                if *leading.borrow() {
                    release(&api, &settings).await;
                    leading.send_replace(false);
                    metrics.is_leader.set(0);
                }
                return Ok(());
            }
        }
    }
}

fn spec(settings: &LeaseSettings, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(settings.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)),
        acquire_time: acquire,
        renew_time: Some(now()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One attempt: `Ok(true)` if this replica holds the lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(current) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(settings.name.clone()), ..ObjectMeta::default() },
            spec: Some(spec(settings, Some(now()), 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current_spec = current.spec.clone().unwrap_or_default();
    let holder = current_spec.holder_identity.clone().filter(|h| !h.is_empty());
    let rv = current.metadata.resource_version.clone();
    let changed = observed.as_ref().is_none_or(|o| o.resource_version != rv);
    if changed {
        *observed = Some(Observed { resource_version: rv.clone(), at: Instant::now() });
    }
    let transitions = current_spec.lease_transitions.unwrap_or(0);
    let mut next = current.clone();
    if holder.as_deref() == Some(settings.identity.as_str()) {
        next.spec = Some(spec(settings, current_spec.acquire_time.clone(), transitions));
    } else {
        let expired = observed.as_ref().is_some_and(|o| o.at.elapsed() >= settings.lease_duration);
        if holder.is_some() && !expired {
            debug!(holder = ?holder, "lease held by another replica");
            return Ok(false);
        }
        next.spec = Some(spec(settings, Some(now()), transitions + 1));
    }
    match api.replace(&settings.name, &PostParams::default(), &next).await {
        Ok(written) => {
            *observed = Some(Observed { resource_version: written.metadata.resource_version, at: Instant::now() });
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up (holder cleared, 1 s duration) so that a standby takes it at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let Ok(Some(mut current)) = api.get_opt(&settings.name).await else { return };
    let spec = current.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&settings.name, &PostParams::default(), &current).await {
        Ok(_) => info!(lease = %settings.name, "released the leader lease"),
        Err(e) => warn!(lease = %settings.name, error = %e, "could not release the leader lease"),
    }
}
