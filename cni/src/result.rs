//! CNI success results, answered in the version of the request: 0.4.0 carries
//! `ips[].version`, 1.0.0 drops it, 1.1.0 adds the interface `mtu`. Unknown keys of a
//! `prevResult` (from other plugins or newer specs) are kept and passed on.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::addr::IpNet;
use crate::version::CniVersion;

mod text {
    //! Serde through `Display` / `FromStr`, for addresses in their CNI text form.
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address (`aa:bb:cc:dd:ee:ff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0 results only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Other keys, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An IP configuration in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    #[serde(with = "text")]
    pub address: IpNet,
    /// The default gateway for this subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Other keys, passed through (the 0.4.0 `version` key is regenerated, not kept).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    #[serde(with = "text")]
    pub dst: IpNet,
    /// Next hop; absent means on-link / the default gateway of the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Other keys (1.1.0 `mtu`, `advmss`, `priority`, `table`, `scope`), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A CNI success result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces created or configured.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes installed.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings, passed through as given (`{}` when none).
    #[serde(default)]
    pub dns: Map<String, Value>,
    /// Other top-level keys, passed through (`cniVersion` is regenerated, not kept).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CniResult {
    /// Decodes a result (a `prevResult`) of any supported version. Returns a message naming
    /// the offending key on failure.
    pub fn from_json(value: &Value) -> Result<CniResult, String> {
        let mut result: CniResult = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        result.extra.remove("cniVersion");
        for ip in &mut result.ips {
            ip.extra.remove("version");
        }
        for (i, ip) in result.ips.iter().enumerate() {
            if let Some(idx) = ip.interface
                && idx >= result.interfaces.len()
            {
                return Err(format!("ips[{i}].interface {idx} points past the {} interfaces", result.interfaces.len()));
            }
        }
        Ok(result)
    }

    /// The result as JSON in `version`.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|iface| {
                let mut iface = iface.clone();
                if version < CniVersion::V1_1_0 {
                    iface.mtu = None;
                }
                serde_json::to_value(iface).unwrap_or(Value::Null)
            })
            .collect();
        out.insert("interfaces".into(), interfaces.into());
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut value = serde_json::to_value(ip).unwrap_or(Value::Null);
                if version == CniVersion::V0_4_0
                    && let Value::Object(map) = &mut value
                {
                    map.insert("version".into(), if ip.address.is_ipv4() { "4" } else { "6" }.into());
                }
                value
            })
            .collect();
        out.insert("ips".into(), ips.into());
        out.insert("routes".into(), serde_json::to_value(&self.routes).unwrap_or(Value::Null));
        out.insert("dns".into(), Value::Object(self.dns.clone()));
        for (k, v) in &self.extra {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(out)
    }

    /// Appends `other`'s interfaces, ips (re-indexed) and routes to this result: how a plugin
    /// given a `prevResult` reports its own changes on top of it.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        for (k, v) in other.dns {
            self.dns.entry(k).or_insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "skabc".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    mtu: Some(1400),
                    sandbox: None,
                    extra: Map::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:f4:01:05".into()),
                    mtu: Some(1400),
                    sandbox: Some("/var/run/netns/p".into()),
                    extra: Map::new(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
                extra: Map::new(),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Map::new(),
            extra: Map::new(),
        }
    }

    #[test]
    fn answers_in_kind() {
        let r = sample();
        let v04 = r.to_json(CniVersion::V0_4_0);
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][1].get("mtu").is_none());
        let v10 = r.to_json(CniVersion::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(CniVersion::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v11["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.244.1.1"}));
        assert_eq!(v11["dns"], json!({}));
        for v in [v04, v10, v11] {
            assert_eq!(CniResult::from_json(&v).unwrap().ips, r.ips);
        }
    }

    #[test]
    fn prev_result_keeps_unknown_keys_and_reindexes() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"x","socketPath":"/s"}],
            "ips":[{"address":"192.168.0.2/24","interface":0}],"routes":[{"dst":"1.2.3.0/24","priority":5}],
            "dns":{"nameservers":["1.1.1.1"]},"custom":true});
        let mut r = CniResult::from_json(&prev).unwrap();
        r.append(sample());
        let out = r.to_json(CniVersion::V1_0_0);
        assert_eq!(out["interfaces"][0]["socketPath"], "/s");
        assert_eq!(out["ips"][1]["interface"], 2);
        assert_eq!(out["routes"][0]["priority"], 5);
        assert_eq!(out["custom"], true);
        assert_eq!(out["dns"]["nameservers"][0], "1.1.1.1");
    }

    #[test]
    fn rejects_bad_prev_results() {
        assert!(CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).is_err());
        assert!(
            CniResult::from_json(&json!({"ips":[{"address":"10.0.0.1/8","interface":3}]}))
                .unwrap_err()
                .contains("ips[0]")
        );
        assert!(CniResult::from_json(&json!({"interfaces":"x"})).is_err());
        assert!(CniResult::from_json(&json!({})).is_ok());
    }
}
