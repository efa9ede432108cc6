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

/// The versions a plugin's answer to `CNI_COMMAND=VERSION` lists (`supportedVersions`,
/// each of the form `N.N.N`), or what is wrong with the answer. A CNI error document
/// (`code`, `msg`) is reported as such. The answer comes from another program: anything
/// is possible, nothing panics.
pub fn parse_version_answer(stdout: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| {
        let shown: String = String::from_utf8_lossy(stdout).chars().take(200).collect();
        format!("the answer is not JSON ({e}): {shown:?}")
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(format!("the answer is not a JSON object: {value}"));
    };
    if let Some(code) = map.get("code") {
        let msg = map.get("msg").and_then(serde_json::Value::as_str).unwrap_or("");
        return Err(format!("the plugin answered error {code}: {msg}"));
    }
    let Some(list) = map.get("supportedVersions") else {
        return Err("the answer has no supportedVersions".to_owned());
    };
    let serde_json::Value::Array(items) = list else {
        return Err(format!("supportedVersions is not a list: {list}"));
    };
    items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(v) if compare_dotted(v, v).is_some() => Ok(v.clone()),
            other => Err(format!("supportedVersions holds {other}, not a version such as \"1.0.0\"")),
        })
        .collect()
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

    #[test]
    fn version_answers_of_plugins() {
        let debian = br#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}"#;
        assert_eq!(parse_version_answer(debian).unwrap().last().map(String::as_str), Some("1.0.0"));
        assert_eq!(parse_version_answer(br#"{"supportedVersions":[]}"#).unwrap(), Vec::<String>::new());
        for (bad, needle) in [
            (&b"portmap v1.1.1"[..], "not JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"code":4,"msg":"CNI_COMMAND env variable missing"}"#, "error 4: CNI_COMMAND"),
            (br#"{"cniVersion":"1.0.0"}"#, "no supportedVersions"),
            (br#"{"supportedVersions":"1.0.0"}"#, "not a list"),
            (br#"{"supportedVersions":["1.0"]}"#, "\"1.0\""),
            (br#"{"supportedVersions":[1]}"#, "holds 1"),
        ] {
            let e = parse_version_answer(bad).unwrap_err();
            assert!(e.contains(needle), "{e} does not mention {needle}");
        }
    }
}
