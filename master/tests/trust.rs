//! The master's trust boundaries (docs/security.md), tried as an attacker inside the
//! cluster would: impersonating another node's agent, forging a pod's address annotation;
//! and its fencing: a leader that vanishes silently, a lease renewal that hangs, a pod
//! re-created under the same name, a write the API server refuses. kube-fake API server,
//! agents over real gRPC/TLS on loopback, bounded waits, nothing timed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use skein_kube_fake::{FakeApiServer, Fault, Kind, Verb};
use skein_master::Master;
use skein_master::leader::LeaseSettings;
use skein_netmodel::ChassisView;
use skein_netmodel::southbound::PortKind;
use skein_southbound::{AgentClient, ClientEvent, TokenSource};

fn pod_port_ips(view: &ChassisView, name: &str) -> Option<Vec<String>> {
    view.items.ports.iter().find_map(|p| match &p.kind {
        PortKind::Pod { pod, .. } if &*pod.name == name => Some(p.ips.iter().map(|n| n.addr().to_string()).collect()),
        _ => None,
    })
}

fn node_annotations(server: &FakeApiServer, node: &str) -> String {
    server.get(Kind::Node, None, node).expect("node")["metadata"]["annotations"].to_string()
}

/// The next refusal of `agent` (it must never connect and get a view).
async fn refusal(agent: &mut AgentClient) -> String {
    loop {
        match tokio::time::timeout(WAIT, agent.events().recv()).await.expect("a refusal").expect("agent runs") {
            ClientEvent::Disconnected(reason) => return reason,
            ClientEvent::Connected => {}
            other => panic!("a refused agent got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_a_nodes_own_agent_is_served_for_it_and_its_annotation_stays_byte_for_byte() {
    let server = FakeApiServer::start().await;
    let master = start_master(&server, "m1").await;
    add_node(&server, "node1", "192.0.2.1");
    add_node(&server, "node2", "192.0.2.2");
    add_pod(&server, "p2", "node2");
    wait_for("p2 annotated", || pod_ip(&server, "p2")).await;
    let victim = agent(&server, master.grpc_addr(), "node2", 2);
    wait_for("node2's view", || victim.view().filter(|v| pod_port_ips(v, "p2").is_some())).await;
    let before = node_annotations(&server, "node2");

    // The attacker (issue 18): registers as node2 with tunnel address 203.0.113.9 —
    // without a token, with node1's token, with a token of another ServiceAccount, with
    // an agent token for another audience.
    let attempts: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("node1's token", Some(node_token(&server, "node1"))),
        ("another account's token", Some(token_for(&server, "web", AUDIENCE, "node1"))),
        (
            "a token for the API server",
            Some(token_for(&server, AGENT_ACCOUNT, "https://kubernetes.default.svc", "node2")),
        ),
        ("a forged token", Some("kf.0123456789abcdef".to_owned())),
    ];
    let mut reasons = Vec::new();
    for (what, token) in attempts {
        let mut s = agent_settings(&server, master.grpc_addr(), "node2", 2);
        s.registration.tunnel_ip = "203.0.113.9".parse().unwrap();
        s.token = token.map(TokenSource::Value);
        let mut attacker = AgentClient::start(s);
        let reason = refusal(&mut attacker).await;
        assert!(attacker.view().is_none(), "{what}: the attacker got a view");
        reasons.push((what, reason));
    }
    for (what, reason) in &reasons {
        let expected = if *what == "node1's token" { "does not have permission" } else { "authentication credentials" };
        assert!(reason.contains(expected), "{what}: {reason}");
    }
    assert!(reasons[1].1.contains("bound to node \"node1\""), "{}", reasons[1].1);

    // Node1's own agent, registering a tunnel address its annotation does not hold, is
    // served its own view — and the stream's word changes no annotation.
    write_chassis(&server, "node1", 1);
    let node1_before = node_annotations(&server, "node1");
    let mut s = agent_settings(&server, master.grpc_addr(), "node1", 1);
    s.registration.tunnel_ip = "203.0.113.9".parse().unwrap();
    let node1 = AgentClient::start(s);
    wait_for("node1's view", || node1.view()).await;
    assert_eq!(node_annotations(&server, "node1"), node1_before);

    // Streams per node are limited (2): a third stream for node2 is refused.
    let second = AgentClient::start(agent_settings(&server, master.grpc_addr(), "node2", 2));
    wait_for("a second node2 stream", || second.view()).await;
    let mut third = AgentClient::start(agent_settings(&server, master.grpc_addr(), "node2", 2));
    let reason = refusal(&mut third).await;
    assert!(reason.contains("resource has been exhausted") && reason.contains("node2"), "{reason}");
    drop(third);

    // The victim's annotation is unchanged byte for byte, and its view still says its
    // own tunnel address for node2.
    assert_eq!(node_annotations(&server, "node2"), before);
    let chassis = victim.view().unwrap().items.chassis;
    assert!(chassis.iter().all(|c| c.tunnel_ip.to_string() != "203.0.113.9"), "{chassis:?}");
    let refused = master.shared().metrics().southbound_refused.clone();
    let count =
        |reason: &str| refused.get_or_create(&skein_master::metrics::RefusedLabel { reason: reason.to_owned() }).get();
    assert!(count("unauthenticated") >= 4 && count("wrong_node") >= 1 && count("too_many_streams") >= 1);
    master.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_addresses_the_master_did_not_allocate_are_ignored_and_reported() {
    let server = FakeApiServer::start().await;
    let master = start_master(&server, "m1").await;
    add_node(&server, "n1", "192.0.2.1");
    add_node(&server, "n2", "192.0.2.2");
    add_pod(&server, "victim", "n1");
    let victim_ip = wait_for("victim annotated", || pod_ip(&server, "victim")).await;
    let a1 = agent(&server, master.grpc_addr(), "n1", 1);
    let a2 = agent(&server, master.grpc_addr(), "n2", 2);
    wait_for("n1's view", || a1.view().filter(|v| pod_port_ips(v, "victim").is_some())).await;
    let victim = server.get(Kind::Pod, Some("default"), "victim").unwrap();
    let victim_annotations = victim["metadata"]["annotations"].to_string();

    // A pod author copies the victim's address onto their pods: bare, and with the
    // victim's signature (bound to the victim's UID).
    let value = victim["metadata"]["annotations"]["skein.dev/pod-networks"].clone();
    let signature = victim["metadata"]["annotations"]["skein.dev/pod-networks-signature"].clone();
    for (name, node, annotations) in [
        ("thief", "n1", json!({"skein.dev/pod-networks": value})),
        ("copycat", "n2", json!({"skein.dev/pod-networks": value, "skein.dev/pod-networks-signature": signature})),
    ] {
        server
            .insert(
                Kind::Pod,
                json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
                       "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}),
            )
            .unwrap();
    }
    add_pod(&server, "honest", "n2");
    wait_for("honest annotated", || pod_ip(&server, "honest")).await;
    for name in ["thief", "copycat"] {
        let events =
            wait_for("an Event on the forger", || Some(events_on(&server, name)).filter(|e| !e.is_empty())).await;
        assert!(
            events
                .iter()
                .any(|(reason, note)| reason == "ForgedAnnotation" && note.contains("not allocated by the master")),
            "{events:?}"
        );
    }
    // The master ignores them: no port for them anywhere, the victim keeps its port and
    // address on its node, and no conflict is reported against the victim.
    let v2 = wait_for("n2's view with honest", || a2.view().filter(|v| pod_port_ips(v, "honest").is_some())).await;
    assert_eq!(pod_port_ips(&v2, "copycat"), None);
    let v1 = a1.view().unwrap();
    assert_eq!(pod_port_ips(&v1, "thief"), None);
    assert_eq!(pod_port_ips(&v1, "victim"), Some(vec![victim_ip.clone()]));
    assert!(events_on(&server, "victim").is_empty(), "{:?}", events_on(&server, "victim"));
    let victim_now = server.get(Kind::Pod, Some("default"), "victim").unwrap();
    assert_eq!(victim_now["metadata"]["annotations"].to_string(), victim_annotations);
    assert_ne!(pod_ip(&server, "honest"), Some(victim_ip));
    master.stop().await.unwrap();
}

fn lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: "kube-system".into(),
        name: "skein-master".into(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(250),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_a_new_leader_after_the_old_one_vanishes_silently() {
    let server = FakeApiServer::start().await;
    let m1 = Master::start(settings("m1", Some(lease("m1")), any_port()), server.client()).await.unwrap();
    tokio::time::timeout(WAIT, m1.leading().wait_for(|l| *l)).await.expect("m1 leads").unwrap();
    let m2 = Master::start(settings("m2", Some(lease("m2")), any_port()), server.client()).await.unwrap();
    add_node(&server, "n1", "192.0.2.1");
    add_pod(&server, "p1", "n1");
    wait_for("p1 annotated", || pod_ip(&server, "p1")).await;

    // The agent reaches the leader through a Service-like relay.
    let relay = Relay::start(m1.grpc_addr()).await;
    let mut agent = agent(&server, relay.addr, "n1", 1);
    let first_master = loop {
        match tokio::time::timeout(WAIT, agent.events().recv()).await.unwrap().unwrap() {
            ClientEvent::Applied(skein_southbound::Applied::Snapshot { master_id, .. }) => break master_id,
            _ => continue,
        }
    };
    assert!(first_master.starts_with("m1-"), "{first_master}");

    // m1 vanishes without a reset: its connections go silent and it stops renewing.
    relay.freeze();
    m1.kill().await;
    tokio::time::timeout(WAIT, m2.leading().wait_for(|l| *l)).await.expect("m2 takes over").unwrap();
    relay.set_target(m2.grpc_addr());
    // Pods created around the takeover get addresses from m2 only, none shared.
    add_pod(&server, "p2", "n1");
    // The agent notices (keepalive) and follows m2: within 30 s of m1 vanishing.
    let followed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(ClientEvent::Applied(skein_southbound::Applied::Snapshot { master_id, .. })) =
                agent.events().recv().await
                && master_id.starts_with("m2-")
            {
                return;
            }
        }
    })
    .await;
    assert!(followed.is_ok(), "the agent did not follow the new leader within 30 s of the old one vanishing");
    wait_for("p2 annotated", || pod_ip(&server, "p2")).await;
    wait_for("p2 in the agent's view", || agent.view().filter(|v| pod_port_ips(v, "p2").is_some())).await;
    assert_eq!(assert_distinct_pod_ips(&server), 2);
    m2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_lease_renewal_stops_the_leader_before_the_standby_takes_over() {
    let server = FakeApiServer::start().await;
    // m1 reaches the API server through a relay that will hang.
    let api_relay = Relay::start(server.addr()).await;
    let m1 =
        Master::start(settings("m1", Some(lease("m1")), any_port()), client_via(&server, &api_relay)).await.unwrap();
    tokio::time::timeout(WAIT, m1.leading().wait_for(|l| *l)).await.expect("m1 leads").unwrap();
    let m2 = Master::start(settings("m2", Some(lease("m2")), any_port()), server.client()).await.unwrap();
    add_node(&server, "n1", "192.0.2.1");
    for name in ["p1", "p2"] {
        add_pod(&server, name, "n1");
    }
    wait_for("p1, p2 annotated", || pod_ip(&server, "p2").and(pod_ip(&server, "p1"))).await;
    // m1 counts a write when its answer comes back, which may be after the API server
    // shows it: wait for both to be counted before taking the figure.
    wait_for("m1 counted its two writes", || (m1.shared().metrics().pods_annotated.get() >= 2).then_some(())).await;
    let written_by_m1 = m1.shared().metrics().pods_annotated.get();

    // Every request of m1 now hangs, its lease renewal included.
    api_relay.freeze();
    let (l1, l2) = (m1.leading(), m2.leading());
    // Never two leaders: m1 stops leading (at its renew deadline) before m2 can take over
    // (at the lease duration).
    wait_for("m2 leads, and never together with m1", || {
        assert!(!(*l1.borrow() && *l2.borrow()), "m1 and m2 both lead");
        (*l2.borrow()).then_some(())
    })
    .await;
    assert!(!*l1.borrow());
    assert!(m1.shared().metrics().lease_renewal_deadline_missed.get() >= 1);
    for name in ["p3", "p4"] {
        add_pod(&server, name, "n1");
    }
    wait_for("p3, p4 annotated by m2", || pod_ip(&server, "p3").and(pod_ip(&server, "p4"))).await;
    assert_eq!(assert_distinct_pod_ips(&server), 4);
    assert_eq!(m1.shared().metrics().pods_annotated.get(), written_by_m1, "m1 wrote after stepping down");
    m2.stop().await.unwrap();
    m1.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_recreated_under_its_name_during_a_watch_gap_gets_an_address_on_its_new_node() {
    let server = FakeApiServer::start().await;
    let master = start_master(&server, "m1").await;
    add_node(&server, "n1", "192.0.2.1");
    add_node(&server, "n2", "192.0.2.2");
    add_pod(&server, "web-0", "n1");
    let old_ip = wait_for("web-0 annotated", || pod_ip(&server, "web-0")).await;
    let old_uid = server.get(Kind::Pod, Some("default"), "web-0").unwrap()["metadata"]["uid"].clone();

    // The master's pod watch breaks and cannot come back while web-0 is deleted and
    // re-created on n2; its history is gone, so the master re-lists and sees only a
    // changed web-0 (another UID), never the deletion.
    server.inject_fault(Fault::new(500).times(10_000).verb(Verb::Watch).kind(Kind::Pod));
    server.end_watches();
    server.store().delete(Kind::Pod, Some("default"), "web-0");
    add_pod(&server, "web-0", "n2");
    let new_uid = server.get(Kind::Pod, Some("default"), "web-0").unwrap()["metadata"]["uid"].clone();
    assert_ne!(old_uid, new_uid);
    server.compact_all_history();
    server.store().clear_faults();

    let new_ip = wait_for("web-0 annotated again", || pod_ip(&server, "web-0")).await;
    let n2 = server.get(Kind::Node, None, "n2").unwrap();
    let subnet = n2["metadata"]["annotations"]["skein.dev/node-subnets"].as_str().unwrap().to_owned();
    let prefix = new_ip.rsplit_once('.').unwrap().0.to_owned();
    assert!(subnet.contains(&prefix), "web-0's new address {new_ip} is not in n2's subnet {subnet}");
    assert_ne!(new_ip, old_ip);
    master.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_write_the_api_server_refuses_is_released_and_reported() {
    let server = FakeApiServer::start().await;
    let master = start_master(&server, "m1").await;
    add_node(&server, "n1", "192.0.2.1");
    add_pod(&server, "p0", "n1");
    wait_for("p0 annotated", || pod_ip(&server, "p0")).await;
    // Admission refuses every write to p1 (e.g. a policy that does not know the master).
    server.inject_fault(Fault::new(403).times(1).verb(Verb::Patch).kind(Kind::Pod).name("p1"));
    add_pod(&server, "p1", "n1");
    let events = wait_for("an Event on p1", || Some(events_on(&server, "p1")).filter(|e| !e.is_empty())).await;
    assert!(events.iter().any(|(reason, note)| reason == "AnnotationRejected" && note.contains("403")), "{events:?}");
    assert_eq!(pod_ip(&server, "p1"), None);
    // Other pods are still annotated: the refused write holds no slot.
    add_pod(&server, "p2", "n1");
    wait_for("p2 annotated", || pod_ip(&server, "p2")).await;
    // Once the pod changes, the write is tried again and now passes.
    let mut p1 = server.get(Kind::Pod, Some("default"), "p1").unwrap();
    p1["metadata"]["labels"]["retry"] = json!("1");
    server.insert(Kind::Pod, p1).unwrap();
    wait_for("p1 annotated after its change", || pod_ip(&server, "p1")).await;
    assert_eq!(assert_distinct_pod_ips(&server), 3);
    master.stop().await.unwrap();
}
