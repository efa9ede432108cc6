//! Annotation spoofing end to end, in network namespaces (`docs/security.md`): a pod whose
//! author copied another pod's `skein.dev/pod-networks` onto it gets nothing from its CNI
//! ADD — the master ignores the value, so its view has no port for the pod — and the victim
//! keeps its address and its connectivity. Real `skein-agent` processes, the real
//! `skein-cni`, the in-process master and API fake, as in `cluster.rs`.
//!
//! Needs root. CI runs it as root; without root it fails, unless SKEIN_SKIP_NETNS_TESTS=1,
//! which skips it (and says so).

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{Cluster, exec, ping};
use serde_json::json;
use skein_kube_fake::Kind;

#[test]
fn netns_a_pod_with_a_forged_address_gets_nothing_and_the_victim_keeps_its_connectivity() {
    let Some(mut c) = Cluster::new("agent_trust", "t", 2) else { return };
    let victim = c.add_pod("victim", 0, "web");
    let peer = c.add_pod("peer", 1, "client");
    if let Err(e) = ping(&peer.ns, &victim.ip, 2, 10) {
        c.fail(&format!("peer → victim before the attack: {e}"));
    }
    let victim_pod = c.api.get(Kind::Pod, Some("default"), "victim").expect("victim");
    let value = victim_pod["metadata"]["annotations"]["skein.dev/pod-networks"].clone();

    // The attacker creates a pod on the victim's node carrying the victim's address.
    let created = c
        .api
        .insert(
            Kind::Pod,
            json!({"metadata": {"name": "thief", "namespace": "default",
                                "annotations": {"skein.dev/pod-networks": value}},
                   "spec": {"nodeName": c.nodes[0].name, "containers": [{"name": "c", "image": "x"}]}}),
        )
        .expect("thief created");
    let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let ns = c.namespace("p-thief");
    let container = format!("ctr-thief-{}", c.prefix);
    let out = c.cni_raw(
        0,
        "ADD",
        &container,
        &format!("/run/netns/{ns}"),
        "eth0",
        &Cluster::cni_args("thief", &container, &uid),
        None,
    );
    assert_ne!(out.code, 0, "the thief's ADD succeeded: {out:?}");
    assert_eq!(out.error_code(), Some(11), "try again later: {out:?}");
    let addresses = exec(&ns, &["ip", "-o", "-4", "addr", "show"]).unwrap_or_default();
    assert!(!addresses.contains(&victim.ip), "the thief holds the victim's address: {addresses}");
    // The master said why, on the thief.
    let events: Vec<String> = c
        .api
        .list(Kind::EventsV1Event, Some("default"))
        .into_iter()
        .filter(|e| e.pointer("/regarding/name").and_then(|n| n.as_str()) == Some("thief"))
        .filter_map(|e| e.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
        .collect();
    assert!(events.iter().any(|r| r == "ForgedAnnotation"), "{events:?}");

    // The victim keeps its address and reaches, and is reached from, the other node.
    let victim_now = c.api.get(Kind::Pod, Some("default"), "victim").expect("victim");
    assert_eq!(victim_now["metadata"]["annotations"], victim_pod["metadata"]["annotations"]);
    if let Err(e) = ping(&peer.ns, &victim.ip, 3, 10) {
        c.fail(&format!("peer → victim after the attack: {e}"));
    }
    if let Err(e) = ping(&victim.ns, &peer.ip, 3, 10) {
        c.fail(&format!("victim → peer after the attack: {e}"));
    }
    let _ = c.cni_raw(
        0,
        "DEL",
        &container,
        &format!("/run/netns/{ns}"),
        "eth0",
        &Cluster::cni_args("thief", &container, &uid),
        None,
    );
}
