//! RoCE readiness: what a RoCE port's QoS settings are (DSCP trust, PFC and ECN per
//! priority), read from sysfs and DCB netlink, compared with the configured expectation.
//!
//! Reading ([`observe`]) is separate from judging ([`evaluate`]) and from reporting
//! ([`ReadinessReport::annotation`]); information the system does not expose is
//! "unknown", never a failure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::config::{RoceExpectation, TrustMode};
use super::dcb::{DcbError, DcbSource};
use super::sysfs::{AttributeError, parse_enabled_flag, read_attribute};

/// Node annotation holding the readiness report.
pub const ANNOTATION: &str = "skein.dev/rdma-readiness";

/// A RoCE device and one of its network interfaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoceTarget {
    /// HCA name, e.g. `mlx5_1`.
    pub device: String,
    /// Its network interface; `None` if the HCA exposes none.
    pub netdev: Option<String>,
}

/// What the system says about one interface. `None` = not exposed or unreadable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Priority trust mode.
    pub trust: Option<TrustMode>,
    /// PFC enabled, per priority 0–7.
    pub pfc: [Option<bool>; 8],
    /// ECN as notification point (`ecn/roce_np/enable/<prio>`), per priority.
    pub ecn_np: [Option<bool>; 8],
    /// ECN as reaction point (`ecn/roce_rp/enable/<prio>`), per priority.
    pub ecn_rp: [Option<bool>; 8],
    /// Why some values are unknown (missing files are not listed: absence is normal).
    pub notes: Vec<String>,
}

/// Parses a `qos/trust` file (Mellanox OFED drivers) leniently: it holds `pcp` or
/// `dscp`, possibly after a label such as `Priority trust state:`.
pub fn parse_trust(text: &str) -> Result<TrustMode, AttributeError> {
    let last = text.split(|c: char| c.is_whitespace() || c == ':').rfind(|w| !w.is_empty()).unwrap_or("");
    if last.eq_ignore_ascii_case("dscp") {
        Ok(TrustMode::Dscp)
    } else if last.eq_ignore_ascii_case("pcp") {
        Ok(TrustMode::Pcp)
    } else {
        Err(AttributeError { value: text.trim().chars().take(64).collect(), expected: "a trust mode (pcp or dscp)" })
    }
}

fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, AttributeError>,
    notes: &mut Vec<String>,
) -> Option<T> {
    match read_attribute(path) {
        Ok(None) => None,
        Ok(Some(text)) => match parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                notes.push(format!("{}: {e}", path.display()));
                None
            }
        },
        Err(e) => {
            notes.push(format!("{}: cannot read: {e}", path.display()));
            None
        }
    }
}

/// Reads what `<sysfs>/class/net/<netdev>` and DCB netlink expose about `netdev`.
/// Blocking (file reads and a netlink round trip): call from a blocking context.
pub fn observe(sysfs_root: &Path, netdev: &str, dcb: &dyn DcbSource) -> Observed {
    let mut observed = Observed::default();
    let net = sysfs_root.join("class/net").join(netdev);
    for prio in 0..8 {
        observed.ecn_np[prio] =
            read_parsed(&net.join(format!("ecn/roce_np/enable/{prio}")), parse_enabled_flag, &mut observed.notes);
        observed.ecn_rp[prio] =
            read_parsed(&net.join(format!("ecn/roce_rp/enable/{prio}")), parse_enabled_flag, &mut observed.notes);
    }
    observed.trust = read_parsed(&net.join("qos/trust"), parse_trust, &mut observed.notes);
    match dcb.query(netdev) {
        Ok(state) => {
            if let Some(mask) = state.pfc_enabled {
                for (prio, slot) in observed.pfc.iter_mut().enumerate() {
                    *slot = Some(mask & (1 << prio) != 0);
                }
            }
            if observed.trust.is_none() {
                observed.trust = state.trust;
            }
        }
        // Absence of DCB is normal on many drivers: unknown, quietly.
        Err(DcbError::NotSupported { .. } | DcbError::NoDevice { .. }) => {}
        Err(e) => observed.notes.push(format!("{netdev}: DCB: {e}")),
    }
    observed
}

/// Outcome of one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// As expected.
    Ok,
    /// Differs from the expectation.
    Mismatch,
    /// The system does not say.
    Unknown,
}

impl Status {
    /// Metric value: 1 ok, 0 mismatch, -1 unknown.
    pub fn metric_value(self) -> i64 {
        match self {
            Status::Ok => 1,
            Status::Mismatch => 0,
            Status::Unknown => -1,
        }
    }
}

/// A checked setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    /// Priority trust mode.
    Trust,
    /// PFC on a priority.
    Pfc,
    /// ECN notification point on a priority.
    EcnNp,
    /// ECN reaction point on a priority.
    EcnRp,
}

impl Setting {
    /// Name used in metrics labels and the annotation.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Trust => "trust",
            Setting::Pfc => "pfc",
            Setting::EcnNp => "ecn_np",
            Setting::EcnRp => "ecn_rp",
        }
    }
}

/// One compared setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingCheck {
    /// Which setting.
    pub setting: Setting,
    /// Priority, for per-priority settings.
    pub priority: Option<u8>,
    /// Expected value, e.g. `dscp` or `enabled`.
    pub expected: String,
    /// Observed value, if known.
    pub observed: Option<String>,
    /// Result.
    pub status: Status,
}

impl SettingCheck {
    /// Key in the annotation: `trust`, `pfc/3`, `ecn_np/3`, ...
    pub fn key(&self) -> String {
        match self.priority {
            Some(p) => format!("{}/{p}", self.setting.name()),
            None => self.setting.name().to_owned(),
        }
    }
}

impl fmt::Display for SettingCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, observed {}",
            self.key(),
            self.expected,
            self.observed.as_deref().unwrap_or("unknown")
        )
    }
}

fn flag_check(setting: Setting, priority: u8, observed: Option<bool>) -> SettingCheck {
    let text = |on: bool| if on { "enabled" } else { "disabled" }.to_owned();
    SettingCheck {
        setting,
        priority: Some(priority),
        expected: text(true),
        observed: observed.map(text),
        status: match observed {
            None => Status::Unknown,
            Some(true) => Status::Ok,
            Some(false) => Status::Mismatch,
        },
    }
}

/// Compares `observed` with `expect`: one check per expected setting and priority.
pub fn evaluate(expect: &RoceExpectation, observed: &Observed) -> Vec<SettingCheck> {
    let mut checks = Vec::new();
    if let Some(trust) = expect.trust {
        checks.push(SettingCheck {
            setting: Setting::Trust,
            priority: None,
            expected: trust.to_string(),
            observed: observed.trust.map(|t| t.to_string()),
            status: match observed.trust {
                None => Status::Unknown,
                Some(t) if t == trust => Status::Ok,
                Some(_) => Status::Mismatch,
            },
        });
    }
    for &prio in &expect.pfc_priorities {
        checks.push(flag_check(Setting::Pfc, prio, observed.pfc[usize::from(prio)]));
    }
    for &prio in &expect.ecn_priorities {
        checks.push(flag_check(Setting::EcnNp, prio, observed.ecn_np[usize::from(prio)]));
        checks.push(flag_check(Setting::EcnRp, prio, observed.ecn_rp[usize::from(prio)]));
    }
    checks
}

/// Overall status: any mismatch → not ready; else any unknown → unknown; else ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// Every checked setting is as expected.
    Ready,
    /// At least one setting differs.
    NotReady,
    /// Nothing differs, but something is unknown.
    Unknown,
    /// The node has no RoCE device.
    NotApplicable,
}

impl Readiness {
    /// Combines setting statuses.
    pub fn of(statuses: impl IntoIterator<Item = Status>) -> Readiness {
        let mut result = Readiness::Ready;
        for status in statuses {
            match status {
                Status::Mismatch => return Readiness::NotReady,
                Status::Unknown => result = Readiness::Unknown,
                Status::Ok => {}
            }
        }
        result
    }

    /// Metric value: 1 ready, 0 not ready, -1 unknown or not applicable.
    pub fn metric_value(self) -> i64 {
        match self {
            Readiness::Ready => 1,
            Readiness::NotReady => 0,
            Readiness::Unknown | Readiness::NotApplicable => -1,
        }
    }

    /// Name as in the annotation.
    pub fn name(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::NotReady => "not-ready",
            Readiness::Unknown => "unknown",
            Readiness::NotApplicable => "not-applicable",
        }
    }
}

/// Readiness of one RoCE interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReadiness {
    /// Device and interface.
    pub target: RoceTarget,
    /// Overall.
    pub readiness: Readiness,
    /// The checks.
    pub checks: Vec<SettingCheck>,
    /// Why some values are unknown.
    pub notes: Vec<String>,
}

/// Readiness of every RoCE interface of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadinessReport {
    /// Per interface, sorted by device then interface.
    pub devices: Vec<DeviceReadiness>,
}

#[derive(Serialize)]
struct AnnotationDevice<'a> {
    device: &'a str,
    netdev: &'a str,
    status: Readiness,
    settings: BTreeMap<String, Status>,
}

#[derive(Serialize)]
struct Annotation<'a> {
    status: Readiness,
    devices: Vec<AnnotationDevice<'a>>,
}

impl ReadinessReport {
    /// Checks every target (blocking: reads sysfs and netlink).
    pub fn collect(
        sysfs_root: &Path,
        targets: &[RoceTarget],
        expect: &RoceExpectation,
        dcb: &dyn DcbSource,
    ) -> ReadinessReport {
        let mut devices: Vec<DeviceReadiness> = targets
            .iter()
            .map(|target| {
                let observed = match &target.netdev {
                    Some(netdev) => observe(sysfs_root, netdev, dcb),
                    None => Observed {
                        notes: vec![format!("{}: no network interface", target.device)],
                        ..Observed::default()
                    },
                };
                let checks = evaluate(expect, &observed);
                DeviceReadiness {
                    target: target.clone(),
                    readiness: Readiness::of(checks.iter().map(|c| c.status)),
                    checks,
                    notes: observed.notes,
                }
            })
            .collect();
        devices.sort_by(|a, b| a.target.cmp(&b.target));
        ReadinessReport { devices }
    }

    /// The node's overall readiness.
    pub fn readiness(&self) -> Readiness {
        if self.devices.is_empty() {
            return Readiness::NotApplicable;
        }
        let mut overall = Readiness::Ready;
        for device in &self.devices {
            match device.readiness {
                Readiness::NotReady => return Readiness::NotReady,
                Readiness::Unknown => overall = Readiness::Unknown,
                Readiness::Ready | Readiness::NotApplicable => {}
            }
        }
        overall
    }

    /// The value of the `skein.dev/rdma-readiness` node annotation, e.g.
    /// `{"status":"not-ready","devices":[{"device":"mlx5_1","netdev":"ens2f0",
    /// "status":"not-ready","settings":{"ecn_np/3":"ok","ecn_rp/3":"ok","pfc/3":"mismatch",
    /// "trust":"unknown"}}]}`. Deterministic, so an unchanged report is not re-patched.
    pub fn annotation(&self) -> String {
        let annotation = Annotation {
            status: self.readiness(),
            devices: self
                .devices
                .iter()
                .map(|d| AnnotationDevice {
                    device: &d.target.device,
                    netdev: d.target.netdev.as_deref().unwrap_or(""),
                    status: d.readiness,
                    settings: d.checks.iter().map(|c| (c.key(), c.status)).collect(),
                })
                .collect(),
        };
        // Serializing plain strings and maps cannot fail.
        serde_json::to_string(&annotation).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::deviceplugin::dcb::DcbState;

    struct FakeDcb(HashMap<String, Result<DcbState, DcbError>>);

    impl DcbSource for FakeDcb {
        fn query(&self, ifname: &str) -> Result<DcbState, DcbError> {
            self.0.get(ifname).cloned().unwrap_or(Err(DcbError::NoDevice { ifname: ifname.to_owned() }))
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn trust_files() {
        assert_eq!(parse_trust("dscp\n"), Ok(TrustMode::Dscp));
        assert_eq!(parse_trust("Priority trust state: pcp\n"), Ok(TrustMode::Pcp));
        assert!(parse_trust("").is_err());
        assert!(parse_trust("vlan").is_err());
    }

    #[test]
    fn sysfs_and_dcb_are_combined_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("class/net/ens2f0");
        write(&net.join("ecn/roce_np/enable/3"), "1\n");
        write(&net.join("ecn/roce_rp/enable/3"), "0\n");
        write(&net.join("ecn/roce_rp/enable/4"), "bogus\n");
        let dcb = FakeDcb(HashMap::from([(
            "ens2f0".to_owned(),
            Ok(DcbState { pfc_enabled: Some(0b1000), trust: Some(TrustMode::Dscp) }),
        )]));
        let observed = observe(dir.path(), "ens2f0", &dcb);
        assert_eq!(observed.ecn_np[3], Some(true));
        assert_eq!(observed.ecn_rp[3], Some(false));
        assert_eq!(observed.ecn_rp[4], None);
        assert_eq!(observed.notes.len(), 1, "{:?}", observed.notes);
        assert!(observed.notes[0].contains("bogus"));
        assert_eq!(observed.pfc[3], Some(true));
        assert_eq!(observed.pfc[0], Some(false));

        let checks = evaluate(&RoceExpectation::default(), &observed);
        let by_key: BTreeMap<String, Status> = checks.iter().map(|c| (c.key(), c.status)).collect();
        assert_eq!(
            by_key,
            BTreeMap::from([
                ("trust".to_owned(), Status::Ok),
                ("pfc/3".to_owned(), Status::Ok),
                ("ecn_np/3".to_owned(), Status::Ok),
                ("ecn_rp/3".to_owned(), Status::Mismatch),
            ])
        );
        assert_eq!(Readiness::of(checks.iter().map(|c| c.status)), Readiness::NotReady);
    }

    #[test]
    fn missing_information_is_unknown_not_failure() {
        let dir = tempfile::tempdir().unwrap();
        let report = ReadinessReport::collect(
            dir.path(),
            &[
                RoceTarget { device: "mlx5_1".into(), netdev: Some("ens9".into()) },
                RoceTarget { device: "mlx5_2".into(), netdev: None },
            ],
            &RoceExpectation { trust: None, pfc_priorities: BTreeSet::from([3]), ecn_priorities: BTreeSet::new() },
            &FakeDcb(HashMap::new()),
        );
        assert_eq!(report.readiness(), Readiness::Unknown);
        assert_eq!(
            report.annotation(),
            r#"{"status":"unknown","devices":[{"device":"mlx5_1","netdev":"ens9","status":"unknown","settings":{"pfc/3":"unknown"}},{"device":"mlx5_2","netdev":"","status":"unknown","settings":{"pfc/3":"unknown"}}]}"#
        );
        let empty = ReadinessReport::default();
        assert_eq!(empty.annotation(), r#"{"status":"not-applicable","devices":[]}"#);
    }
}
