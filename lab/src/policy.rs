//! What the NetworkPolicies deployed allow, for the checks. The API objects are converted as
//! the master converts them (`skein_master::objects`), and every expected verdict comes from
//! the reference model (`skein-policy-model`), which is written from the specification apart
//! from the compiler: the checks compare what the data plane does with what the spec says,
//! not with what the compiler meant.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use skein_master::objects;
use skein_netmodel::cluster::{ObjectKey, Protocol};
use skein_policy_model::{Connection, Decision, Endpoint, Model, Transport, Verdict};

use crate::echo::Proto;

/// The policies deployed and the model that judges connections against them.
#[derive(Debug, Clone)]
pub struct Policies {
    model: Model,
    /// The policies the model holds, `namespace/name`, sorted.
    pub names: Vec<String>,
    /// What the master leaves out of them (a rule with a field that does not parse, a
    /// policy whose pod selector does not parse), one line each: the model leaves out the
    /// same, so the checks expect what Skein enforces.
    pub problems: Vec<String>,
}

fn protocol(proto: Proto) -> Protocol {
    match proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
    }
}

fn pod_key(pod: &Pod) -> ObjectKey {
    ObjectKey::new(
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl Policies {
    /// The model of these objects; `None` when no NetworkPolicy is deployed (then the
    /// checks are those of a cluster without policies).
    pub fn new(namespaces: &[Namespace], pods: &[Pod], policies: &[NetworkPolicy]) -> Option<Policies> {
        if policies.is_empty() {
            return None;
        }
        let namespaces: Vec<_> = namespaces.iter().filter_map(|n| objects::namespace(n).object).collect();
        let pods: Vec<_> = pods.iter().filter_map(|p| objects::pod(p).object).collect();
        let mut converted = Vec::new();
        let mut problems = Vec::new();
        for np in policies {
            let c = objects::network_policy(np);
            let name = format!(
                "{}/{}",
                np.metadata.namespace.as_deref().unwrap_or_default(),
                np.metadata.name.as_deref().unwrap_or_default()
            );
            problems.extend(c.problems.iter().map(|p| format!("networkpolicy {name}: {p}")));
            converted.extend(c.object);
        }
        let mut names: Vec<String> = converted.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
        names.sort();
        Some(Policies { model: Model::new(&namespaces, &pods, &converted), names, problems })
    }

    /// A pod connecting to another pod's port (directly, or through a Service after DNAT).
    pub fn pod_to_pod(&self, src: &Pod, dst: &Pod, proto: Proto, port: u16) -> Verdict {
        self.model.verdict(&Connection {
            src: Endpoint::Pod(pod_key(src)),
            dst: Endpoint::Pod(pod_key(dst)),
            transport: Transport::Port(protocol(proto), port),
        })
    }

    /// A pod connecting to an address outside the pod network.
    pub fn pod_to_address(&self, src: &Pod, ip: IpAddr, proto: Proto, port: u16) -> Verdict {
        self.model.verdict(&Connection {
            src: Endpoint::Pod(pod_key(src)),
            dst: Endpoint::External(ip),
            transport: Transport::Port(protocol(proto), port),
        })
    }

    /// Traffic from an address outside the pod network (as the pod sees it: a NodePort
    /// client after the gateway's SNAT) to a pod's port.
    pub fn address_to_pod(&self, ip: IpAddr, dst: &Pod, proto: Proto, port: u16) -> Verdict {
        self.model.verdict(&Connection {
            src: Endpoint::External(ip),
            dst: Endpoint::Pod(pod_key(dst)),
            transport: Transport::Port(protocol(proto), port),
        })
    }

    /// True unless a policy isolates the pod's egress.
    pub fn egress_open(&self, pod: &Pod) -> bool {
        // Any address will do: isolation does not depend on the peer.
        let probe = self.pod_to_address(pod, IpAddr::from([192, 0, 2, 1]), Proto::Tcp, 1);
        probe.egress == Decision::NotIsolated
    }
}

/// A verdict in a few words, naming the policy and rule that allowed it or the policies
/// that isolate the side that denied it: `ingress shop/cart spec.ingress[0]`,
/// `egress denied (isolated by shop/out)`, `not isolated`.
pub fn explain(verdict: &Verdict) -> String {
    fn part(direction: &str, decision: &Decision) -> Option<String> {
        match decision {
            Decision::NotIsolated => None,
            Decision::Always(why) => Some(format!("{direction} always allowed ({why})")),
            Decision::Allowed { policy, rule } => Some(format!("{direction} {policy} spec.{direction}[{rule}]")),
            Decision::Denied { isolated_by } => {
                let names: Vec<String> = isolated_by.iter().map(ToString::to_string).collect();
                Some(format!("{direction} denied (isolated by {})", names.join(", ")))
            }
        }
    }
    let parts: Vec<String> = if verdict.allowed() {
        [part("egress", &verdict.egress), part("ingress", &verdict.ingress)].into_iter().flatten().collect()
    } else {
        // Only the side that denies: the other does not matter.
        [("egress", &verdict.egress), ("ingress", &verdict.ingress)]
            .into_iter()
            .filter(|(_, d)| !d.allows())
            .filter_map(|(dir, d)| part(dir, d))
            .collect()
    };
    if parts.is_empty() { "not isolated".to_owned() } else { parts.join(", ") }
}

/// How many connections each explanation covers, for a row's detail: `not isolated ×5,
/// ingress shop/cart spec.ingress[0] ×2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally(BTreeMap<String, usize>);

impl Tally {
    /// Counts one more connection with this explanation.
    pub fn add(&mut self, explanation: &str) {
        *self.0.entry(explanation.to_owned()).or_default() += 1;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(&String, &usize)> = self.0.iter().collect();
        // The most frequent first; then by name, so that the text is stable.
        entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let text: Vec<String> = entries.iter().map(|(why, n)| format!("{why} ×{n}")).collect();
        f.write_str(&text.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str, ports: serde_json::Value) -> Pod {
        let networks = json!({"default": {"ip_addresses": [format!("{ip}/24")], "mac_address": "0a:58:0a:f4:01:05",
            "gateway_ips": [], "routes": [], "mtu": 1400}});
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                         "annotations": {"skein.dev/pod-networks": networks.to_string()}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]}
        }))
        .unwrap()
    }

    fn policy(value: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn verdicts_name_the_policy_and_rule_or_the_isolating_policies() {
        let cart1 =
            pod("shop", "cart-1", "node1", "10.244.0.5", "cart", json!([{"name": "http", "containerPort": 8080}]));
        let cart2 =
            pod("shop", "cart-2", "node2", "10.244.1.5", "cart", json!([{"name": "http", "containerPort": 9090}]));
        let shopper = pod("shop", "shopper", "node2", "10.244.1.6", "shopper", json!([]));
        let other = pod("demo", "other", "node1", "10.244.0.6", "other", json!([]));
        let ns: Vec<Namespace> = vec![serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap()];
        let policies = [
            policy(json!({"metadata": {"namespace": "shop", "name": "deny"}, "spec": {"podSelector": {}}})),
            policy(json!({"metadata": {"namespace": "shop", "name": "cart"}, "spec": {
                "podSelector": {"matchLabels": {"app": "cart"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "shopper"}}}], "ports": [{"port": "http"}]}]}})),
            policy(json!({"metadata": {"namespace": "shop", "name": "out"}, "spec": {
                "podSelector": {"matchLabels": {"app": "shopper"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}]}]}})),
            // A rule the master leaves out (a protocol that does not parse): reported.
            policy(json!({"metadata": {"namespace": "demo", "name": "bad"}, "spec": {
                "podSelector": {"matchLabels": {"app": "nobody"}},
                "ingress": [{"ports": [{"protocol": "QUIC", "port": 1}]}]}})),
        ];
        let pods = [cart1.clone(), cart2.clone(), shopper.clone(), other.clone()];
        let p = Policies::new(&ns, &pods, &policies).unwrap();
        assert_eq!(p.names, ["demo/bad", "shop/cart", "shop/deny", "shop/out"]);
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(p.problems[0].starts_with("networkpolicy demo/bad: spec.ingress[0].ports[0].protocol"));

        // The named port resolves per destination pod.
        let v = p.pod_to_pod(&shopper, &cart1, Proto::Tcp, 8080);
        assert!(v.allowed());
        assert_eq!(explain(&v), "egress shop/out spec.egress[0], ingress shop/cart spec.ingress[0]");
        assert!(!p.pod_to_pod(&shopper, &cart1, Proto::Tcp, 9090).allowed());
        assert!(p.pod_to_pod(&shopper, &cart2, Proto::Tcp, 9090).allowed());
        let v = p.pod_to_pod(&other, &cart2, Proto::Tcp, 9090);
        assert_eq!(explain(&v), "ingress denied (isolated by shop/cart, shop/deny)");
        let v = p.pod_to_pod(&shopper, &other, Proto::Udp, 53);
        assert_eq!(explain(&v), "egress denied (isolated by shop/out)");
        assert_eq!(
            explain(&p.pod_to_pod(&other, &other, Proto::Tcp, 1)),
            "egress always allowed (hairpin), ingress always allowed (hairpin)"
        );
        assert_eq!(explain(&p.pod_to_address(&other, "198.51.100.1".parse().unwrap(), Proto::Tcp, 80)), "not isolated");
        assert!(!p.address_to_pod("100.64.0.2".parse().unwrap(), &cart1, Proto::Tcp, 8080).allowed());
        assert!(p.egress_open(&other) && !p.egress_open(&shopper));

        let mut tally = Tally::default();
        for why in ["b", "a", "b"] {
            tally.add(why);
        }
        assert_eq!(tally.to_string(), "b ×2, a ×1");
        assert!(Policies::new(&ns, &pods, &[]).is_none());
    }
}
