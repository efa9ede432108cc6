//! The demo's scenario: on every node a `web` pod (a named TCP port and a UDP port; `web-1`
//! publishes both on its node as hostPorts) and a `client` pod (no ports: the workload's
//! default 8080/TCP), two `api` pods; a ClusterIP Service with a named and a numbered target
//! port (TCP and UDP), a NodePort Service, and a Service with ClientIP session affinity.
//! Standard Kubernetes YAML, applied like a user's.

/// The demo's namespace.
pub const NAMESPACE: &str = "demo";
/// The NodePort of the `web-nodeport` Service.
pub const NODE_PORT: u16 = 30080;
/// The hostPort of `web-1`'s `http` port (TCP).
pub const HOST_PORT_TCP: u16 = 18080;
/// The hostPort of `web-1`'s `dns` port (UDP).
pub const HOST_PORT_UDP: u16 = 15353;

fn pod(name: &str, node: &str, labels: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels: {{{labels}}}\nspec:\n  \
         nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: main\n    image: skein-lab/echo\n{ports}"
    )
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
                "service/api"
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
        assert_eq!(parse(&demo_yaml(1), "default").unwrap().len(), 8);
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
