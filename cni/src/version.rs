//! CNI specification versions the plugin speaks, and the comparisons the commands need.

use std::fmt;

/// A CNI specification version this plugin accepts and answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.4.0: the first version with CHECK; `ips[].version` is still present in results.
    V0_4_0,
    /// 1.0.0: `ips[].version` dropped.
    V1_0_0,
    /// 1.1.0: STATUS, GC, `cniVersions` in config lists, interface `mtu` in results.
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first (the VERSION command's `supportedVersions`).
    pub const ALL: [CniVersion; 3] = [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

    /// The newest version this plugin speaks.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parses a version string; `None` when this plugin does not speak it.
    pub fn parse(text: &str) -> Option<CniVersion> {
        match text {
            "0.4.0" => Some(CniVersion::V0_4_0),
            "1.0.0" => Some(CniVersion::V1_0_0),
            "1.1.0" => Some(CniVersion::V1_1_0),
            _ => None,
        }
    }

    /// The version as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Whether STATUS and GC exist in this version.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares two dotted version strings numerically (`"0.10.0" > "0.9.1"`); `None` when either
/// is not of the form `N.N.N`.
pub fn compare_dotted(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parts(v: &str) -> Option<[u64; 3]> {
        let mut out = [0u64; 3];
        let mut it = v.split('.');
        for slot in &mut out {
            *slot = it.next()?.parse().ok()?;
        }
        if it.next().is_some() {
            return None;
        }
        Some(out)
    }
    Some(parts(a)?.cmp(&parts(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn parses_supported_versions_only() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(CniVersion::parse("0.3.1"), None);
        assert_eq!(CniVersion::parse("1.2.0"), None);
        assert_eq!(CniVersion::parse(""), None);
    }

    #[test]
    fn orders_versions() {
        assert!(CniVersion::V0_4_0 < CniVersion::V1_1_0);
        assert!(!CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V1_1_0.has_status_and_gc());
        assert_eq!(compare_dotted("0.10.0", "0.9.1"), Some(Ordering::Greater));
        assert_eq!(compare_dotted("1.0", "1.0.0"), None);
        assert_eq!(compare_dotted("1.0.0.0", "1.0.0"), None);
    }
}
