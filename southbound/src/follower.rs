//! The agent's side of the stream as a pure state machine: [`Follower`] keeps a chassis's
//! view up to date from the master's messages and says what to answer (an ack of the
//! installed version, or a resync request). No I/O, so it is tested message by message;
//! [`crate::client`] drives it over gRPC.

use std::collections::BTreeSet;

use skein_netmodel::southbound::{ChassisDelta, ChassisView, DeltaError};
use skein_proto::southbound::v1 as pb;
use thiserror::Error;

use crate::convert::{ConvertError, delta_from_proto, snapshot_from_proto};

/// What applying one master message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A snapshot replaced the view.
    Snapshot {
        /// The view's version now.
        version: u64,
        /// The master that numbers versions.
        master_id: String,
        /// True if the contents differ from the view held before (false after a master
        /// restart that changed nothing: the agent installs nothing).
        changed: bool,
    },
    /// A delta was applied.
    Delta {
        /// The view's version now.
        version: u64,
    },
}

impl Applied {
    /// The version to acknowledge.
    pub fn version(&self) -> u64 {
        match self {
            Applied::Snapshot { version, .. } | Applied::Delta { version } => *version,
        }
    }
}

/// Why a message was not applied; the view is unchanged and the agent asks for a resync.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FollowError {
    /// The message does not describe valid items.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The delta does not apply to the view.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// A delta arrived before any snapshot.
    #[error("delta {from}→{to} before any snapshot")]
    NoSnapshot {
        /// `from_version`.
        from: u64,
        /// `to_version`.
        to: u64,
    },
    /// The message is for another chassis.
    #[error("message for chassis {got:?}, this agent is {want:?}")]
    WrongChassis {
        /// The chassis named in the message.
        got: String,
        /// This agent's chassis.
        want: String,
    },
    /// The message has no content.
    #[error("empty master message")]
    Empty,
}

/// A chassis's view, followed message by message.
#[derive(Clone, Debug)]
pub struct Follower {
    chassis: String,
    view: Option<ChassisView>,
}

impl Follower {
    /// A follower for `chassis` with no view yet.
    pub fn new(chassis: impl Into<String>) -> Follower {
        Follower { chassis: chassis.into(), view: None }
    }

    /// The current view, once a snapshot arrived.
    pub fn view(&self) -> Option<&ChassisView> {
        self.view.as_ref()
    }

    /// Applies one master message; on error the view is unchanged.
    pub fn apply(&mut self, message: &pb::MasterMessage) -> Result<Applied, FollowError> {
        match message.message.as_ref().ok_or(FollowError::Empty)? {
            pb::master_message::Message::Snapshot(s) => {
                if s.chassis != self.chassis {
                    return Err(FollowError::WrongChassis { got: s.chassis.clone(), want: self.chassis.clone() });
                }
                let view = snapshot_from_proto(s)?;
                let changed = self.view.as_ref().is_none_or(|old| old.items != view.items);
                let version = view.version;
                self.view = Some(view);
                Ok(Applied::Snapshot { version, master_id: s.master_id.clone(), changed })
            }
            pb::master_message::Message::Delta(d) => {
                if d.chassis != self.chassis {
                    return Err(FollowError::WrongChassis { got: d.chassis.clone(), want: self.chassis.clone() });
                }
                let delta = delta_from_proto(d)?;
                let view = self
                    .view
                    .as_mut()
                    .ok_or(FollowError::NoSnapshot { from: delta.from_version, to: delta.to_version })?;
                apply_in_place(view, &delta)?;
                Ok(Applied::Delta { version: view.version })
            }
        }
    }
}

fn check<T: Ord>(set: &BTreeSet<T>, removed: &BTreeSet<T>, added: &BTreeSet<T>) -> bool {
    removed.iter().all(|r| set.contains(r)) && added.iter().all(|a| !set.contains(a) || removed.contains(a))
}

fn change<T: Ord + Clone>(set: &mut BTreeSet<T>, removed: &BTreeSet<T>, added: &BTreeSet<T>) {
    for r in removed {
        set.remove(r);
    }
    set.extend(added.iter().cloned());
}

/// [`ChassisView::apply`] without copying the view: every check first, then the change,
/// so on error the view is unchanged. A view holds thousands of items and a delta a few,
/// so this keeps an agent's work per delta proportional to the delta.
fn apply_in_place(view: &mut ChassisView, delta: &ChassisDelta) -> Result<(), DeltaError> {
    if delta.chassis != view.chassis {
        return Err(DeltaError::WrongChassis { view: view.chassis.clone(), delta: delta.chassis.clone() });
    }
    if delta.from_version != view.version {
        return Err(DeltaError::VersionMismatch { view: view.version, delta: delta.from_version });
    }
    let (items, r, a) = (&view.items, &delta.removed, &delta.added);
    let mismatch = |kind| DeltaError::ContentMismatch { from: delta.from_version, to: delta.to_version, kind };
    if !check(&items.chassis, &r.chassis, &a.chassis) {
        return Err(mismatch("chassis"));
    }
    if !check(&items.datapaths, &r.datapaths, &a.datapaths) {
        return Err(mismatch("datapaths"));
    }
    if !check(&items.ports, &r.ports, &a.ports) {
        return Err(mismatch("ports"));
    }
    if !check(&items.flows, &r.flows, &a.flows) {
        return Err(mismatch("flows"));
    }
    if !check(&items.load_balancers, &r.load_balancers, &a.load_balancers) {
        return Err(mismatch("load balancers"));
    }
    let items = &mut view.items;
    change(&mut items.chassis, &r.chassis, &a.chassis);
    change(&mut items.datapaths, &r.datapaths, &a.datapaths);
    change(&mut items.ports, &r.ports, &a.ports);
    change(&mut items.flows, &r.flows, &a.flows);
    change(&mut items.load_balancers, &r.load_balancers, &a.load_balancers);
    view.version = delta.to_version;
    Ok(())
}

#[cfg(test)]
mod tests {
    use skein_netmodel::southbound::{ChassisDelta, DatapathBinding, DatapathKey, DatapathKind, ItemSet};

    use super::*;
    use crate::convert::{delta_to_proto, snapshot_to_proto};

    fn snapshot(version: u64, items: ItemSet) -> pb::MasterMessage {
        let view = ChassisView { chassis: "a".into(), version, items };
        pb::MasterMessage { message: Some(pb::master_message::Message::Snapshot(snapshot_to_proto(&view, "m", 1))) }
    }

    #[test]
    fn follows_snapshots_and_deltas() {
        let mut f = Follower::new("a");
        let mut delta = ChassisDelta { chassis: "a".into(), from_version: 1, to_version: 2, ..Default::default() };
        delta.added.datapaths.insert(DatapathBinding {
            key: DatapathKey::JOIN,
            name: "join".into(),
            kind: DatapathKind::Switch,
        });
        let d = pb::MasterMessage { message: Some(pb::master_message::Message::Delta(delta_to_proto(&delta, 1))) };
        assert!(matches!(f.apply(&d), Err(FollowError::NoSnapshot { .. })));
        let applied = f.apply(&snapshot(1, ItemSet::default())).unwrap();
        assert!(matches!(applied, Applied::Snapshot { version: 1, changed: true, .. }));
        assert_eq!(f.apply(&d).unwrap(), Applied::Delta { version: 2 });
        // Applying it again is a version mismatch; the view stays at 2.
        assert!(matches!(f.apply(&d), Err(FollowError::Delta(_))));
        assert_eq!(f.view().unwrap().version, 2);
        // The same contents from a restarted master: nothing changed.
        let items = f.view().unwrap().items.clone();
        let applied = f.apply(&snapshot(1, items)).unwrap();
        assert!(matches!(applied, Applied::Snapshot { changed: false, .. }));
        let mut other = snapshot(1, ItemSet::default());
        if let Some(pb::master_message::Message::Snapshot(s)) = other.message.as_mut() {
            s.chassis = "b".into();
        }
        assert!(matches!(f.apply(&other), Err(FollowError::WrongChassis { .. })));
    }
}
