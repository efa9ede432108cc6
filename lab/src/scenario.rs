//! The demo's scenario: on every node a `web` pod (a named TCP port and a UDP port; `web-1`
//! publishes both on its node as hostPorts) and a `client` pod (no ports: the workload's
//! default 8080/TCP), two `api` pods; a ClusterIP Service with a named and a numbered target
//! port (TCP and UDP), a NodePort Service, and a Service with ClientIP session affinity.
//! Next to it, in namespaces of their own, a shop isolated by NetworkPolicies (a default
//! deny, allow-from-app on a named port two pods map to different numbers, allow-from-
//! namespace, an ipBlock with an `except`, an egress deny) and an operations namespace whose
//! egress is limited. Standard Kubernetes YAML, applied like a user's.

/// The demo's namespace.
pub const NAMESPACE: &str = "demo";
/// The namespace the NetworkPolicies isolate.
pub const SHOP_NAMESPACE: &str = "shop";
/// A namespace the shop lets in, whose own egress is limited.
pub const OPS_NAMESPACE: &str = "ops";
/// The NodePort of the `web-nodeport` Service.
pub const NODE_PORT: u16 = 30080;
/// The NodePort of the shop's `cart-nodeport` Service (its backends deny it).
pub const SHOP_NODE_PORT: u16 = 30090;
/// The hostPort of `web-1`'s `http` port (TCP).
pub const HOST_PORT_TCP: u16 = 18080;
/// The hostPort of `web-1`'s `dns` port (UDP).
pub const HOST_PORT_UDP: u16 = 15353;

fn pod(name: &str, node: &str, labels: &str, ports: &str) -> String {
    pod_in(NAMESPACE, name, node, labels, ports)
}

fn pod_in(namespace: &str, name: &str, node: &str, labels: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{{labels}}}\nspec:\n  \
         nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: main\n    image: skein-lab/echo\n{ports}"
    )
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}"
    )
}

/// The shop and the operations namespace: pods, Services and the NetworkPolicies that
/// isolate them. With `nodes` ≥ 3 the pods are spread so that every verdict is taken both
/// on the source's node and across the tunnel.
pub fn policy_yaml(nodes: usize) -> String {
    let nodes = nodes.max(1);
    let node = |i: usize| format!("node{}", (i - 1) % nodes + 1);
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SHOP_NAMESPACE}\n  labels: {{team: shop}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPS_NAMESPACE}\n  labels: {{team: ops}}\n"
    );
    // One port name, two numbers: the named-port rule allows 8080 on cart-1 and 9090 on
    // cart-2, and the other port of each stays closed to the shopper.
    yaml.push_str(&pod_in(
        SHOP_NAMESPACE,
        "cart-1",
        &node(1),
        "app: cart",
        "    ports:\n    - {name: http, containerPort: 8080}\n    - {name: admin, containerPort: 9090}\n",
    ));
    yaml.push_str(&pod_in(
        SHOP_NAMESPACE,
        "cart-2",
        &node(2),
        "app: cart",
        "    ports:\n    - {name: http, containerPort: 9090}\n    - {name: admin, containerPort: 8080}\n",
    ));
    yaml.push_str(&pod_in(SHOP_NAMESPACE, "shopper-1", &node(3), "app: shopper", ""));
    yaml.push_str(&pod_in(
        SHOP_NAMESPACE,
        "db-1",
        &node(2),
        "app: db",
        "    ports:\n    - {name: sql, containerPort: 5432}\n    - {name: stats, containerPort: 8125, protocol: UDP}\n",
    ));
    yaml.push_str(&pod_in(OPS_NAMESPACE, "monitor-1", &node(3), "app: monitor", ""));
    yaml.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: cart\n  namespace: {SHOP_NAMESPACE}\nspec:\n  selector: {{app: cart}}\n  \
         ports:\n  - {{name: http, port: 80, targetPort: http}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: cart-nodeport\n  namespace: {SHOP_NAMESPACE}\nspec:\n  type: NodePort\n  \
         selector: {{app: cart}}\n  ports:\n  - {{port: 80, targetPort: http, nodePort: {SHOP_NODE_PORT}}}\n"
    ));
    // Every shop pod is isolated for ingress.
    yaml.push_str(&policy(SHOP_NAMESPACE, "default-deny", "  podSelector: {}\n  policyTypes: [Ingress]\n"));
    // Allow from an app, on a named port.
    yaml.push_str(&policy(
        SHOP_NAMESPACE,
        "cart-from-shopper",
        "  podSelector: {matchLabels: {app: cart}}\n  ingress:\n  - from:\n    \
         - podSelector: {matchExpressions: [{key: app, operator: In, values: [shopper]}]}\n    ports:\n    - {port: http}\n",
    ));
    // Allow from a namespace, on every port.
    yaml.push_str(&policy(
        SHOP_NAMESPACE,
        "from-ops",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: ops}}\n",
    ));
    // An ipBlock with an except, on pod addresses: one node subnet is left out.
    yaml.push_str(&policy(
        SHOP_NAMESPACE,
        "db-from-cluster",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    \
         - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}\n    ports:\n    - {protocol: TCP, port: 5432}\n",
    ));
    // Egress deny: the shopper reaches the carts and nothing else (not the outside).
    yaml.push_str(&policy(
        SHOP_NAMESPACE,
        "shopper-egress",
        "  podSelector: {matchLabels: {app: shopper}}\n  policyTypes: [Egress]\n  egress:\n  \
         - to:\n    - podSelector: {matchLabels: {app: cart}}\n",
    ));
    // The operations namespace reaches the shop and the internet, not the other pods.
    yaml.push_str(&policy(
        OPS_NAMESPACE,
        "shop-and-internet",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    \
         - namespaceSelector: {matchLabels: {team: shop}}\n  - to:\n    \
         - ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}\n",
    ));
    yaml
}

/// The scenario for a lab of `nodes` nodes, as multi-document YAML.
pub fn demo_yaml(nodes: usize) -> String {
    let nodes = nodes.max(1);
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    let web_ports =
        "    ports:\n    - {name: http, containerPort: 8080}\n    - {name: dns, containerPort: 5353, protocol: UDP}\n";
    let published = format!(
        "    ports:\n    - {{name: http, containerPort: 8080, hostPort: {HOST_PORT_TCP}}}\n    \
         - {{name: dns, containerPort: 5353, protocol: UDP, hostPort: {HOST_PORT_UDP}}}\n"
    );
    for i in 1..=nodes {
        let node = format!("node{i}");
        let ports = if i == 1 { published.as_str() } else { web_ports };
        yaml.push_str(&pod(&format!("web-{i}"), &node, "app: web", ports));
        yaml.push_str(&pod(&format!("client-{i}"), &node, "role: client", ""));
    }
    for i in 1..=2 {
        let node = format!("node{}", (i - 1) % nodes + 1);
        yaml.push_str(&pod(
            &format!("api-{i}"),
            &node,
            "app: api",
            "    ports:\n    - {name: grpc, containerPort: 9000}\n",
        ));
    }
    yaml.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NAMESPACE}\nspec:\n  selector: {{app: web}}\n  ports:\n  \
         - {{name: http, port: 80, targetPort: http}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-nodeport\n  namespace: {NAMESPACE}\nspec:\n  type: NodePort\n  \
         selector: {{app: web}}\n  ports:\n  - {{port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: {NAMESPACE}\nspec:\n  selector: {{app: api}}\n  \
         sessionAffinity: ClientIP\n  ports:\n  - {{name: grpc, port: 9000, targetPort: grpc}}\n"
    ));
    yaml.push_str(&policy_yaml(nodes));
    yaml
}

/// The example allreduce job (`manifests/examples/allreduce-job.yaml`: a headless Service and
/// an Indexed Job of two `skein-allreduce` ranks, each given a `skein.dev/rdma` device).
pub const ALLREDUCE_EXAMPLE: &str = include_str!("../../manifests/examples/allreduce-job.yaml");
/// The example's sweep (8 B to 256 MiB, for a benchmark on real nodes).
pub const ALLREDUCE_EXAMPLE_ARGS: &str = r#"args: ["bench", "--min-bytes", "8", "--max-bytes", "256M"]"#;
/// The demo's: 8 B to 1 MiB, 20 timed calls per size, every size checked against the
/// reference — seconds, in a debug build, on a loaded machine.
pub const ALLREDUCE_DEMO_ARGS: &str = r#"args: ["bench", "--min-bytes", "8", "--max-bytes", "1M", "--iters", "20"]"#;

/// The example allreduce job with the demo's short sweep, as it is applied in the demo.
pub fn allreduce_job_yaml() -> Result<String, String> {
    if !ALLREDUCE_EXAMPLE.contains(ALLREDUCE_EXAMPLE_ARGS) {
        return Err(format!(
            "manifests/examples/allreduce-job.yaml no longer holds the line {ALLREDUCE_EXAMPLE_ARGS:?} the demo shortens"
        ));
    }
    Ok(ALLREDUCE_EXAMPLE.replace(ALLREDUCE_EXAMPLE_ARGS, ALLREDUCE_DEMO_ARGS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, parse};

    #[test]
    fn the_scenario_is_valid_yaml_for_the_lab() {
        let manifests = parse(&demo_yaml(3), "default").unwrap();
        let described: Vec<String> = manifests.iter().map(Manifest::describe).collect();
        assert_eq!(
            described,
            [
                "namespace/demo",
                "pod/web-1",
                "pod/client-1",
                "pod/web-2",
                "pod/client-2",
                "pod/web-3",
                "pod/client-3",
                "pod/api-1",
                "pod/api-2",
                "service/web",
                "service/web-nodeport",
                "service/api",
                "namespace/shop",
                "namespace/ops",
                "pod/cart-1",
                "pod/cart-2",
                "pod/shopper-1",
                "pod/db-1",
                "pod/monitor-1",
                "service/cart",
                "service/cart-nodeport",
                "networkpolicy.networking.k8s.io/default-deny",
                "networkpolicy.networking.k8s.io/cart-from-shopper",
                "networkpolicy.networking.k8s.io/from-ops",
                "networkpolicy.networking.k8s.io/db-from-cluster",
                "networkpolicy.networking.k8s.io/shopper-egress",
                "networkpolicy.networking.k8s.io/shop-and-internet",
            ]
        );
        let Manifest::Service(nodeport) = &manifests[10] else { panic!() };
        let spec = nodeport.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30080));
        let Manifest::Pod(web1) = &manifests[1] else { panic!() };
        let ports = web1.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
        assert_eq!(ports[0].host_port, Some(i32::from(HOST_PORT_TCP)));
        assert_eq!((ports[1].host_port, ports[1].protocol.as_deref()), (Some(i32::from(HOST_PORT_UDP)), Some("UDP")));
        let Manifest::Pod(web2) = &manifests[3] else { panic!() };
        assert!(web2.spec.as_ref().unwrap().containers[0].ports.iter().flatten().all(|p| p.host_port.is_none()));
        assert_eq!(parse(&demo_yaml(1), "default").unwrap().len(), 8 + 15);
        // The policies convert without a problem (the master would program all of them).
        for m in &manifests {
            if let Manifest::NetworkPolicy(np) = m {
                let converted = skein_master::objects::network_policy(np);
                assert!(converted.problems.is_empty(), "{:?}", converted.problems);
                assert!(converted.object.is_some());
            }
        }
        // Two pods map the port name `http` to different numbers.
        let http = |i: usize| {
            let Manifest::Pod(p) = &manifests[i] else { panic!() };
            let ports = p.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
            ports.iter().find(|p| p.name.as_deref() == Some("http")).unwrap().container_port
        };
        assert_eq!((http(14), http(15)), (8080, 9090));
    }

    #[test]
    fn the_demo_runs_the_example_allreduce_job_with_a_short_sweep() {
        let manifests = parse(&allreduce_job_yaml().unwrap(), NAMESPACE).unwrap();
        let Manifest::Job(job) = &manifests[1] else { panic!("{manifests:?}") };
        assert_eq!(job.metadata.namespace.as_deref(), Some(NAMESPACE));
        let container = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.args.as_ref().unwrap().join(" "), "bench --min-bytes 8 --max-bytes 1M --iters 20");
    }
}
