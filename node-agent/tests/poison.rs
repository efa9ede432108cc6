//! Failure isolation end to end, in network namespaces (`docs/security.md`): a poison
//! object — two Services sharing an externalIP and port, a mistake anyone allowed to
//! create Services can make — is left out of the translation and reported (a counter, a
//! warning in the log), and every node keeps installing new views, completing CNI ADD and
//! reporting ready. Real `skein-agent` processes, the real `skein-cni`, the in-process
//! master and API fake, as in `cluster.rs`.
//!
//! Needs root. CI runs it as root; without root it fails, unless SKEIN_SKIP_NETNS_TESTS=1,
//! which skips it (and says so).

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../datapath/tests/netns/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use harness::{Cluster, exec, ping};
use serde_json::json;
use skein_kube_fake::Kind;
use traffic::{NameServer, fetch_answers, join_within};

/// The agent's `/metrics` on node `i`.
fn scrape(c: &Cluster, i: usize) -> String {
    exec(
        &c.nodes[i].ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9476; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
        ],
    )
    .unwrap_or_default()
}

/// The value of the sample `series` in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))?.trim().parse().ok())
}

/// A ClusterIP Service `name` on `vip`:80 → port 8080 of `backend` (on `node`), with
/// `external_ips`.
fn service(c: &Cluster, name: &str, vip: &str, external_ips: &[&str], backend: &str, node: &str) {
    c.insert(
        Kind::Service,
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"clusterIP": vip, "externalIPs": external_ips, "selector": {"app": name},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    c.insert(
        Kind::EndpointSlice,
        json!({"metadata": {"name": format!("{name}-1"), "namespace": "default",
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [backend], "conditions": {"ready": true}, "nodeName": node}]}),
    );
}

fn fetch_one(ns: &str, dst: SocketAddrV4) -> Result<String, String> {
    join_within(fetch_answers(ns, dst, 1), Duration::from_secs(40)).map(|mut v| v.pop().unwrap_or_default())
}

#[test]
fn netns_two_services_sharing_an_external_ip_stop_nothing_else() {
    let Some(mut c) = Cluster::new("agent_poison", "x", 2) else { return };
    let web = c.add_pod("web", 0, "first");
    let other = c.add_pod("other", 1, "second");
    let at = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080);
    let _web_server = NameServer::start(&web.ns, at, "web").expect("server web");
    let _other_server = NameServer::start(&other.ns, at, "other").expect("server other");

    // The poison: "second" claims the externalIP and port "first" already has.
    let (n0, n1) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    service(&c, "first", "10.96.0.70", &["203.0.113.50"], &web.ip, &n0);
    service(&c, "second", "10.96.0.71", &["203.0.113.50"], &other.ip, &n1);
    for i in 0..2 {
        c.wait_for("the conflict to be reported", Duration::from_secs(30), || {
            sample(&scrape(&c, i), "skein_untranslated_flows").is_some_and(|n| n > 0.0)
        });
        c.wait_ready(i);
    }
    let log = c.agent_log(0);
    assert!(log.contains("logical flow left out") && log.contains("second"), "the log names the object: {log}");

    // Both nodes keep installing: a Service created after the poison works from both,
    // and so do both poisoned Services' cluster IPs.
    let late = c.add_pod("late", 1, "late");
    let _late_server = NameServer::start(&late.ns, at, "late").expect("server late");
    service(&c, "late", "10.96.0.72", &[], &late.ip, &n1);
    let from0 = c.add_pod("client0", 0, "client");
    let from1 = c.add_pod("client1", 1, "client");
    for client in [&from0, &from1] {
        for (vip, answer) in [("10.96.0.72", "late"), ("10.96.0.70", "web"), ("10.96.0.71", "other")] {
            match fetch_one(&client.ns, SocketAddrV4::new(vip.parse().expect("vip"), 80)) {
                Ok(got) if got == answer => {}
                other => c.fail(&format!("{} → {vip}: {other:?}", client.name)),
            }
        }
        for peer in [&web, &other, &late] {
            if let Err(e) = ping(&client.ns, &peer.ip, 2, 10) {
                c.fail(&format!("{} → {}: {e}", client.name, peer.name));
            }
        }
    }
    for i in 0..2 {
        c.wait_ready(i);
    }
}
