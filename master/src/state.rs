//! The state the controller and the southbound streams share: the incremental [`Engine`]
//! and, per chassis, the subscribed streams and the versions not yet acknowledged. One
//! lock covers both so that a subscriber gets a snapshot and then exactly the deltas that
//! follow it — none missed, none twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use parking_lot::Mutex;
use prost::Message;
use skein_netmodel::{ChassisView, ClusterChange, Engine, Update};
use skein_proto::southbound::v1 as pb;
use skein_southbound::convert::{delta_to_proto, snapshot_to_proto};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::metrics::{ChassisLabel, MasterMetrics};

/// Deltas queued for one stream before it counts as lagging (it then gets a snapshot).
const SUBSCRIBER_QUEUE: usize = 4096;
/// Unacknowledged versions remembered per chassis for the programming latency.
const PENDING_MAX: usize = 1024;

struct Subscriber {
    id: u64,
    schema_version: u32,
    tx: mpsc::Sender<pb::Delta>,
}

struct Inner {
    engine: Engine,
    subscribers: HashMap<String, Vec<Subscriber>>,
    pending: HashMap<String, VecDeque<(u64, Instant)>>,
    next_id: u64,
}

/// A stream's subscription: the view to send first, then the deltas after it.
#[derive(Debug)]
pub struct Subscription {
    /// Subscription id (for [`Shared::unsubscribe`]).
    pub id: u64,
    /// The snapshot to send first.
    pub snapshot: pb::Snapshot,
    /// Encoded size of the snapshot.
    pub snapshot_bytes: usize,
    /// Deltas after the snapshot; closed when the chassis disappears or the stream lags.
    pub deltas: mpsc::Receiver<pb::Delta>,
}

/// The engine and the southbound fan-out, shared by the controller and the streams.
pub struct Shared {
    inner: Mutex<Inner>,
    metrics: MasterMetrics,
    master_id: String,
    generation: watch::Sender<u64>,
    acked: watch::Sender<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("master_id", &self.master_id).finish_non_exhaustive()
    }
}

impl Shared {
    /// Shares `engine`; `master_id` names this process in snapshots.
    pub fn new(engine: Engine, metrics: MasterMetrics, master_id: String) -> Shared {
        Shared {
            inner: Mutex::new(Inner { engine, subscribers: HashMap::new(), pending: HashMap::new(), next_id: 0 }),
            metrics,
            master_id,
            generation: watch::Sender::new(0),
            acked: watch::Sender::new(BTreeMap::new()),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &MasterMetrics {
        &self.metrics
    }

    /// This master process's id (in every snapshot).
    pub fn master_id(&self) -> &str {
        &self.master_id
    }

    /// Runs `f` on the engine (read-only).
    pub fn with_engine<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.inner.lock().engine)
    }

    /// Bumped after every applied batch (streams waiting for their chassis watch it).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The version each chassis acknowledged last.
    pub fn acked(&self) -> watch::Receiver<BTreeMap<String, u64>> {
        self.acked.subscribe()
    }

    /// Applies a batch of changes first seen at `seen`, and sends the deltas to the
    /// subscribed streams.
    pub fn apply(&self, changes: Vec<ClusterChange>, seen: Instant) -> Update {
        let count = changes.len() as u64;
        let mut guard = self.inner.lock();
        let start = Instant::now();
        let update = guard.engine.apply(changes);
        self.metrics.compile_latency.observe(start.elapsed().as_secs_f64());
        self.metrics.changes_applied.inc_by(count);
        let inner = &mut *guard;
        for delta in &update.deltas {
            let label = ChassisLabel { chassis: delta.chassis.clone() };
            self.metrics.chassis_version.get_or_create(&label).set(i64::try_from(delta.to_version).unwrap_or(i64::MAX));
            let Some(subs) = inner.subscribers.get_mut(&delta.chassis) else { continue };
            let pending = inner.pending.entry(delta.chassis.clone()).or_default();
            if pending.len() == PENDING_MAX {
                pending.pop_front();
            }
            pending.push_back((delta.to_version, seen));
            let mut encoded: Option<(u32, pb::Delta)> = None;
            subs.retain(|s| {
                let message = match &encoded {
                    Some((schema, m)) if *schema == s.schema_version => m.clone(),
                    _ => {
                        let m = delta_to_proto(delta, s.schema_version);
                        encoded = Some((s.schema_version, m.clone()));
                        m
                    }
                };
                match s.tx.try_send(message) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(chassis = %delta.chassis, "southbound stream lags; it gets a snapshot");
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
        for c in &update.added_chassis {
            self.metrics.chassis_version.get_or_create(&ChassisLabel { chassis: c.clone() }).set(1);
        }
        for c in &update.removed_chassis {
            debug!(chassis = %c, "chassis removed; closing its streams");
            inner.subscribers.remove(c);
            inner.pending.remove(c);
            let label = ChassisLabel { chassis: c.clone() };
            self.metrics.chassis_version.remove(&label);
            self.metrics.chassis_installed_version.remove(&label);
        }
        self.metrics.compile_issues.set(i64::try_from(inner.engine.issues().count()).unwrap_or(i64::MAX));
        drop(guard);
        self.generation.send_modify(|g| *g += 1);
        update
    }

    /// Subscribes a stream to `chassis` in `schema_version`: its snapshot now and the
    /// deltas after it; `None` while the chassis has no view.
    pub fn subscribe(&self, chassis: &str, schema_version: u32) -> Option<Subscription> {
        let (view, id, deltas): (ChassisView, u64, _) = {
            let mut inner = self.inner.lock();
            let view = inner.engine.snapshot(chassis)?;
            let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
            inner.next_id += 1;
            let id = inner.next_id;
            inner.subscribers.entry(chassis.to_owned()).or_default().push(Subscriber { id, schema_version, tx });
            (view, id, rx)
        };
        let snapshot = snapshot_to_proto(&view, &self.master_id, schema_version);
        let snapshot_bytes = snapshot.encoded_len();
        self.metrics.snapshot_bytes.inc_by(snapshot_bytes as u64);
        Some(Subscription { id, snapshot, snapshot_bytes, deltas })
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, chassis: &str, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(subs) = inner.subscribers.get_mut(chassis) {
            subs.retain(|s| s.id != id);
            if subs.is_empty() {
                inner.subscribers.remove(chassis);
            }
        }
    }

    /// Records that `chassis` installed `version`.
    pub fn ack(&self, chassis: &str, version: u64) {
        let now = Instant::now();
        {
            let mut inner = self.inner.lock();
            if inner.engine.version(chassis).is_none() {
                return;
            }
            let label = ChassisLabel { chassis: chassis.to_owned() };
            if let Some(pending) = inner.pending.get_mut(chassis) {
                while pending.front().is_some_and(|(v, _)| *v <= version) {
                    if let Some((_, seen)) = pending.pop_front() {
                        self.metrics
                            .programming_latency
                            .get_or_create(&label)
                            .observe(now.saturating_duration_since(seen).as_secs_f64());
                    }
                }
            }
            self.metrics
                .chassis_installed_version
                .get_or_create(&label)
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
        self.acked.send_modify(|acked| {
            acked.insert(chassis.to_owned(), version);
        });
    }

    /// True if `chassis` has a view.
    pub fn has_chassis(&self, chassis: &str) -> bool {
        self.inner.lock().engine.version(chassis).is_some()
    }
}
