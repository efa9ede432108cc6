//! The southbound stream over TLS: certificates from a CA made in the test (rcgen), the
//! master against the kube-fake API server, agents over real gRPC on loopback. Waits are
//! bounded; nothing is timed.

mod common;

use clap::Parser;
use common::*;
use skein_kube_fake::FakeApiServer;
use skein_master::Master;
use skein_master::cli::Cli;
use skein_master::tls::ServerTls;
use skein_netmodel::southbound::PortKind;

fn has_pod_port(view: &skein_netmodel::ChassisView, name: &str) -> bool {
    view.items.ports.iter().any(|p| matches!(&p.kind, PortKind::Pod { pod, .. } if &*pod.name == name))
}

/// A master serving over TLS with a certificate for [`MASTER_NAME`] signed by `ca`.
async fn tls_master(server: &FakeApiServer, ca: &TestCa) -> Master {
    let cert = ca.server(MASTER_NAME);
    let mut settings = settings("m1", None, any_port());
    settings.grpc_tls = Some(ServerTls::from_pem(cert.cert_pem, cert.key_pem, None).expect("valid TLS material"));
    Master::start(settings, server.client()).await.expect("master starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_tls_registers_and_gets_its_view() {
    let server = FakeApiServer::start().await;
    let ca = TestCa::new("skein test CA");
    let master = tls_master(&server, &ca).await;
    add_node(&server, "n1", "192.0.2.1");
    add_pod(&server, "p1", "n1");
    wait_for("p1 annotated", || pod_ip(&server, "p1")).await;

    let secure = tls_agent(&server, master.grpc_addr(), "n1", 1, &ca, None);
    wait_for("n1's view over TLS, with p1's port", || view_of(&secure).filter(|v| has_pod_port(v, "p1"))).await;
    assert_eq!(master.shared().metrics().southbound_streams.get(), 1);

    // A plaintext agent gets nothing from the TLS port.
    let mut settings = agent_settings(&server, master.grpc_addr(), "n1", 2);
    settings.endpoint = format!("http://{}", master.grpc_addr());
    settings.tls = None;
    let mut plaintext = skein_southbound::AgentClient::start(settings);
    refused(&mut plaintext, 2).await;
    assert!(plaintext.view().is_none());
    master.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_trust_the_masters_ca_is_refused() {
    let server = FakeApiServer::start().await;
    let ca = TestCa::new("skein test CA");
    let master = tls_master(&server, &ca).await;
    add_node(&server, "n1", "192.0.2.1");
    add_pod(&server, "p1", "n1");
    wait_for("p1 annotated", || pod_ip(&server, "p1")).await;

    let other = TestCa::new("another CA");
    let mut untrusting = tls_agent(&server, master.grpc_addr(), "n1", 1, &other, None);
    let reason = refused(&mut untrusting, 2).await;
    assert!(reason.contains("certificate"), "{reason}");
    assert!(untrusting.view().is_none());
    assert_eq!(master.shared().metrics().southbound_streams.get(), 0);

    // The same agent trusting the right CA is served.
    let trusting = tls_agent(&server, master.grpc_addr(), "n1", 1, &ca, None);
    wait_for("n1's view", || view_of(&trusting).filter(|v| has_pod_port(v, "p1"))).await;
    master.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_agents_with_a_certificate_it_signed_are_served() {
    let server = FakeApiServer::start().await;
    let ca = TestCa::new("skein server CA");
    let client_ca = TestCa::new("skein agents CA");
    let server_cert = ca.server(MASTER_NAME);

    // Through the flags, as the binary starts: the PEM files are read from disk.
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path.display().to_string()
    };
    let cert_path = write("tls.crt", &server_cert.cert_pem);
    let key_path = write("tls.key", &server_cert.key_pem);
    let client_ca_path = write("client-ca.crt", &client_ca.pem);
    let cli = Cli::try_parse_from([
        "skein-master",
        "--southbound-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--no-leader-election",
        "--identity",
        "m1",
        "--grpc-tls-cert",
        &cert_path,
        "--grpc-tls-key",
        &key_path,
        "--grpc-tls-client-ca",
        &client_ca_path,
    ])
    .expect("flags parse");
    let settings = cli.options.settings().expect("TLS files load");
    assert!(settings.grpc_tls.as_ref().is_some_and(ServerTls::requires_client_certificates));
    let master = Master::start(settings, server.client()).await.expect("master starts");
    add_node(&server, "n1", "192.0.2.1");
    add_pod(&server, "p1", "n1");
    wait_for("p1 annotated", || pod_ip(&server, "p1")).await;

    // No client certificate: refused.
    let mut anonymous = tls_agent(&server, master.grpc_addr(), "n1", 1, &ca, None);
    refused(&mut anonymous, 2).await;
    assert!(anonymous.view().is_none());
    drop(anonymous);

    // A certificate from another CA (here the server's): refused.
    let stranger_cert = ca.client("n1");
    let mut stranger = tls_agent(&server, master.grpc_addr(), "n1", 1, &ca, Some(&stranger_cert));
    refused(&mut stranger, 2).await;
    assert!(stranger.view().is_none());
    drop(stranger);
    assert_eq!(master.shared().metrics().southbound_streams.get(), 0);

    // A certificate signed by the client CA: served.
    let agent_cert = client_ca.client("n1");
    let agent = tls_agent(&server, master.grpc_addr(), "n1", 1, &ca, Some(&agent_cert));
    wait_for("n1's view over mutual TLS", || view_of(&agent).filter(|v| has_pod_port(v, "p1"))).await;
    master.stop().await.expect("clean stop");
}
