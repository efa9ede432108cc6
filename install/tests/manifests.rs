//! Invariants of every rendering of the chart (`manifests/` and `tests/rendered/*.yaml`):
//! what a CNI install must get right, checked against Skein's own types where there is one.
//! Schemas, `helm lint` and "manifests/ is what the chart renders" are checked by
//! `scripts/validate-install.sh`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{Flags, Render, all_containers, container, env, listen_port, renders, var_refs};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skein_agent::deviceplugin::config::{Config as RdmaConfig, DEFAULT_RESOURCE_NAME, Format};
use skein_cni::ConfList;

fn agent(render: &Render) -> (DaemonSet, PodSpec) {
    let ds: DaemonSet = render.component("DaemonSet", "agent");
    let spec = ds.spec.clone().and_then(|s| s.template.spec).expect("agent pod spec");
    (ds, spec)
}

fn master(render: &Render) -> (Deployment, PodSpec) {
    let deployment: Deployment = render.component("Deployment", "master");
    let spec = deployment.spec.clone().and_then(|s| s.template.spec).expect("master pod spec");
    (deployment, spec)
}

fn config_map(render: &Render) -> BTreeMap<String, String> {
    let (_, spec) = agent(render);
    let name = env(container(&spec, "agent"))["CLUSTER_CIDR"]
        .value_from
        .as_ref()
        .and_then(|v| v.config_map_key_ref.as_ref())
        .map(|r| r.name.clone())
        .expect("the agent's CLUSTER_CIDR comes from a ConfigMap");
    let cm: ConfigMap = render.get("ConfigMap", Some(&render.namespace()), &name);
    cm.data.unwrap_or_default()
}

/// The value a flag gets once `$(VAR)` references are expanded from the container's env
/// (literal values and ConfigMap keys of this render).
fn expanded(render: &Render, c: &Container, text: &str) -> String {
    let env = env(c);
    let mut out = text.to_owned();
    for var in var_refs(text) {
        let e = env.get(&var).unwrap_or_else(|| panic!("container {}: $({var}) is not in its env", c.name));
        let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => {
                let cm: ConfigMap = render.get("ConfigMap", Some(&render.namespace()), &r.name);
                cm.data.unwrap_or_default().get(&r.key).cloned().expect("key checked elsewhere")
            }
            (None, None) => format!("<{var} from the pod>"),
        };
        out = out.replace(&format!("$({var})"), &value);
    }
    out
}

/// Paths the container mounts from the host: mount path → host path.
fn host_mounts(spec: &PodSpec, c: &Container) -> BTreeMap<String, String> {
    let volumes: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| (v.name.as_str(), h.path.as_str())))
        .collect();
    c.volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| volumes.get(m.name.as_str()).map(|host| (m.mount_path.clone(), (*host).to_owned())))
        .collect()
}

#[test]
fn every_render_has_the_objects_of_a_cni_install() {
    for render in renders() {
        let kinds: BTreeMap<&str, usize> = render.objects.iter().fold(BTreeMap::new(), |mut m, o| {
            *m.entry(o.kind()).or_default() += 1;
            m
        });
        for (kind, at_least) in [
            ("ServiceAccount", 2),
            ("ClusterRole", 2),
            ("ClusterRoleBinding", 2),
            ("Role", 2),
            ("RoleBinding", 2),
            ("ConfigMap", 1),
            ("Deployment", 1),
            ("DaemonSet", 1),
            ("Service", 1),
        ] {
            assert!(
                kinds.get(kind).copied().unwrap_or(0) >= at_least,
                "render {}: {kinds:?} lacks {kind}",
                render.name
            );
        }
        let namespace = render.namespace();
        if let Some(ns) = render.find("Namespace", None, &namespace) {
            let ns: Namespace = ns.typed();
            let labels = ns.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
                Some("privileged"),
                "render {}: the namespace must admit the privileged agent",
                render.name
            );
        }
    }
    let default = &renders()[0];
    assert!(default.find("Namespace", None, "skein-system").is_some(), "manifests/ creates skein-system");
}

#[test]
fn the_agent_runs_on_every_node_in_the_host_network() {
    for render in renders() {
        let (ds, spec) = agent(&render);
        let who = format!("render {}: agent", render.name);
        assert_eq!(spec.host_network, Some(true), "{who}: hostNetwork");
        assert_eq!(spec.dns_policy.as_deref(), Some("Default"), "{who}: cluster DNS needs the pod network first");
        assert_eq!(spec.priority_class_name.as_deref(), Some("system-node-critical"), "{who}: priority");
        let tolerates_all = spec.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none() && t.value.is_none()
        });
        assert!(tolerates_all, "{who}: must tolerate every taint ({{operator: Exists}}): {:?}", spec.tolerations);
        let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.clone()).expect("update strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{who}");
        assert_eq!(
            strategy.rolling_update.and_then(|r| r.max_unavailable),
            Some(IntOrString::Int(1)),
            "{who}: one node at a time"
        );
        let main = container(&spec, "agent");
        let privileged = main.security_context.as_ref().and_then(|s| s.privileged);
        assert_eq!(privileged, Some(true), "{who}: raw sockets, netns, iptables");
        assert!(main.liveness_probe.is_some(), "{who}: liveness probe");
    }
}

#[test]
fn the_datapath_runs_apart_from_the_agent_on_its_socket() {
    for render in renders() {
        let who = format!("render {}: datapath", render.name);
        let ds: DaemonSet = render.component("DaemonSet", "datapath");
        let spec = ds.spec.clone().and_then(|s| s.template.spec).expect("datapath pod spec");
        assert_eq!(spec.host_network, Some(true), "{who}: the node's interfaces are in the host namespace");
        assert_eq!(spec.automount_service_account_token, Some(false), "{who}: it needs no API access");
        let dp = container(&spec, "datapath");
        assert_eq!(dp.command.as_deref(), Some(&["skein-dp".to_owned()][..]), "{who}");
        let control = Flags::of(dp).value("--control").expect("--control").to_owned();
        let (_, agent_spec) = agent(&render);
        let main = container(&agent_spec, "agent");
        let socket =
            Flags::of(main).value("--datapath-socket").expect("the agent drives the datapath process").to_owned();
        assert_eq!(socket, control, "{who}: the agent's --datapath-socket is the datapath's --control");
        // The socket's directory is the same host directory in both pods.
        let dir = Path::new(&control).parent().expect("a directory").to_string_lossy().into_owned();
        let (mine, theirs) = (host_mounts(&spec, dp), host_mounts(&agent_spec, main));
        assert!(
            mine.contains_key(&dir) && mine.get(&dir) == theirs.get(&dir),
            "{who}: {dir} shared: {mine:?} {theirs:?}"
        );
        // One node at a time (each replacement pauses its node's forwarding), or on demand.
        let strategy = ds.spec.and_then(|s| s.update_strategy).unwrap_or_default();
        match strategy.type_.as_deref() {
            Some("RollingUpdate") => {
                let max = strategy.rolling_update.and_then(|r| r.max_unavailable);
                assert_eq!(max, Some(IntOrString::Int(1)), "{who}: one node at a time");
            }
            Some("OnDelete") => assert_ne!(render.name, "default", "{who}: rolling by default"),
            other => panic!("{who}: update strategy {other:?}"),
        }
    }
}

#[test]
fn the_agent_installs_the_cni_plugin_and_mounts_what_it_needs() {
    for render in renders() {
        let (_, spec) = agent(&render);
        let who = format!("render {}", render.name);
        let init = spec.init_containers.clone().unwrap_or_default();
        let install = init.iter().find(|c| c.name == "install-cni").unwrap_or_else(|| panic!("{who}: no install-cni"));
        assert_eq!(install.command.as_deref(), Some(&["skein-agent".to_owned()][..]), "{who}");
        let install_flags = Flags::of(install);
        assert_eq!(install_flags.subcommand.as_deref(), Some("install-cni"), "{who}");
        let main = container(&spec, "agent");
        let flags = Flags::of(main);
        for (c, f) in [(install, &install_flags), (main, &flags)] {
            let mounts = host_mounts(&spec, c);
            for flag in ["--cni-bin-dir", "--cni-conf-dir"] {
                let dir = f.value(flag).unwrap_or_else(|| panic!("{who}: {}: {flag}", c.name));
                assert_eq!(
                    mounts.get(dir).map(String::as_str),
                    Some(dir),
                    "{who}: container {} must mount the host's {dir} ({flag}) at the same path",
                    c.name
                );
            }
            assert_eq!(
                install_flags.value("--cni-socket"),
                f.value("--cni-socket"),
                "{who}: the conflist's socket is the agent's"
            );
        }
        let mounts = host_mounts(&spec, main);
        let socket = flags.value("--cni-socket").expect("--cni-socket");
        let state = flags.value("--state-dir").expect("--state-dir");
        assert_eq!(Path::new(socket).parent(), Some(Path::new(state)), "{who}: the socket lives in the state dir");
        assert_eq!(mounts.get(state).map(String::as_str), Some(state), "{who}: {state} from the host");
        assert_eq!(mounts.get("/run/netns").map(String::as_str), Some("/run/netns"), "{who}: /run/netns");
        let netns = main.volume_mounts.iter().flatten().find(|m| m.mount_path == "/run/netns").expect("netns mount");
        assert_eq!(
            netns.mount_propagation.as_deref(),
            Some("HostToContainer"),
            "{who}: network namespaces created after the agent started must show"
        );
        if flags.has("--no-device-plugin") {
            assert!(!flags.has("--rdma-config"), "{who}: --rdma-config without a device plugin");
        } else {
            let dir = flags.value("--device-plugin-dir").unwrap_or("/var/lib/kubelet/device-plugins");
            assert_eq!(
                mounts.get(dir).map(String::as_str),
                Some("/var/lib/kubelet/device-plugins"),
                "{who}: kubelet's device plugin dir"
            );
            let sysfs = flags.value("--sysfs-root").unwrap_or("/sys");
            assert_eq!(mounts.get(sysfs).map(String::as_str), Some("/sys"), "{who}: sysfs");
            let dev = flags.value("--dev-root").unwrap_or("/dev");
            assert_eq!(mounts.get(dev).map(String::as_str), Some("/dev"), "{who}: /dev");
        }
    }
}

#[test]
fn the_rdma_config_is_mounted_and_parses_as_the_device_plugins_config() {
    let mut checked = 0;
    for render in renders() {
        let (_, spec) = agent(&render);
        let main = container(&spec, "agent");
        let Some(path) = Flags::of(main).value("--rdma-config").map(str::to_owned) else { continue };
        let mount = main
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&path).parent() == Some(Path::new(&m.mount_path)))
            .unwrap_or_else(|| panic!("render {}: nothing mounted at {path}'s directory", render.name));
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mount's volume");
        let cm_name = volume.config_map.as_ref().map(|c| c.name.clone()).expect("a ConfigMap volume");
        let cm: ConfigMap = render.get("ConfigMap", Some(&render.namespace()), &cm_name);
        let key = Path::new(&path).file_name().and_then(|n| n.to_str()).expect("a file name");
        let text = cm.data.unwrap_or_default().get(key).cloned().unwrap_or_else(|| panic!("{cm_name} has no {key}"));
        let config = RdmaConfig::parse(&text, Format::from_path(Path::new(&path)))
            .unwrap_or_else(|e| panic!("render {}: {cm_name}/{key}: {e}", render.name));
        assert!(!config.resources.is_empty(), "render {}: no resources in the RDMA config", render.name);
        checked += 1;
    }
    assert!(checked > 0, "some render (tests/values/custom.yaml) must carry an RDMA config");
}

#[test]
fn the_conflist_in_the_config_map_is_what_the_agent_writes_and_parses_as_skeins_own() {
    for render in renders() {
        let who = format!("render {}", render.name);
        let data = config_map(&render);
        let text = data.get("10-skein.conflist").unwrap_or_else(|| panic!("{who}: no 10-skein.conflist"));
        let conflist = ConfList::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{who}: conflist: {e:?}"));
        assert_eq!(conflist.name, "skein", "{who}");
        let types: Vec<&str> = conflist.plugins.iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["skein-cni", "portmap", "bandwidth"], "{who}");
        // A runtime that speaks only 1.0.0 (Debian's reference plugins) gets 1.0.0, and the
        // plugin's stdin built from the list parses as the plugin's own config.
        assert_eq!(conflist.negotiate_version(&["0.4.0", "1.0.0"]).as_deref(), Some("1.0.0"), "{who}");
        let stdin = conflist.plugin_config(0, "1.0.0", None, None).expect("plugin 0");
        let netconf = skein_cni::config::NetConf::parse(stdin.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{who}: skein-cni's stdin: {e:?}"));
        let (_, spec) = agent(&render);
        let socket = Flags::of(container(&spec, "agent")).value("--cni-socket").expect("--cni-socket").to_owned();
        assert_eq!(netconf.agent_socket, Path::new(&socket), "{who}: the conflist points at the agent's socket");
        // The ConfigMap shows exactly what the agent's install-cni writes.
        let written: serde_json::Value =
            serde_json::from_str(&skein_agent::cniinstall::conflist(Path::new(&socket))).expect("the agent's JSON");
        let shown: serde_json::Value = serde_json::from_str(text).expect("parsed above");
        assert_eq!(shown, written, "{who}: the ConfigMap's conflist differs from skein_agent::cniinstall::conflist");
    }
}

#[test]
fn the_master_is_redundant_probed_and_in_the_host_network() {
    for render in renders() {
        let who = format!("render {}: master", render.name);
        let (deployment, spec) = master(&render);
        let dspec = deployment.spec.clone().expect("spec");
        assert_eq!(spec.host_network, Some(true), "{who}: agents reach it before the pod network exists");
        assert_eq!(spec.dns_policy.as_deref(), Some("Default"), "{who}: cluster DNS needs the pod network first");
        let replicas = dspec.replicas.unwrap_or(1);
        if render.name == "default" {
            assert_eq!(replicas, 2, "{who}: two replicas with leader election");
        }
        let pod_labels = dspec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        assert!(
            anti.iter().any(|term| term.topology_key == "kubernetes.io/hostname"
                && term
                    .label_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|m| m.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))),
            "{who}: one replica per node (required anti-affinity on its own labels)"
        );
        let tolerates_not_ready =
            spec.tolerations.iter().flatten().any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready"));
        assert!(tolerates_not_ready, "{who}: nodes are NotReady until the CNI runs");
        let c = container(&spec, "master");
        let flags = Flags::of(c);
        let metrics = listen_port(flags.value("--metrics-listen").unwrap_or("0.0.0.0:9477"));
        let southbound = listen_port(flags.value("--southbound-listen").unwrap_or("0.0.0.0:6643"));
        let ports: BTreeMap<String, i32> =
            c.ports.iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.container_port)).collect();
        assert_eq!(ports.get("metrics"), Some(&metrics), "{who}: port `metrics`");
        assert_eq!(ports.get("southbound"), Some(&southbound), "{who}: port `southbound`");
        for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{who}: {path} probe"));
            assert_eq!(get.path.as_deref(), Some(path), "{who}");
            let port = match &get.port {
                IntOrString::Int(p) => *p,
                IntOrString::String(name) => ports[name],
            };
            assert_eq!(port, metrics, "{who}: {path} is served on --metrics-listen");
        }
        let requests = c.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{who}: resource requests");
        let env = env(c);
        for (var, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
            let got = env.get(var).and_then(|e| e.value_from.as_ref()).and_then(|v| v.field_ref.as_ref());
            assert_eq!(got.map(|f| f.field_path.as_str()), Some(field), "{who}: {var} (Lease identity, namespace)");
        }
    }
}

#[test]
fn agents_find_the_leader_through_the_master_service() {
    for render in renders() {
        let who = format!("render {}", render.name);
        let (_, agent_spec) = agent(&render);
        let target = Flags::of(container(&agent_spec, "agent"))
            .value("--master-service")
            .unwrap_or_else(|| panic!("{who}: the agent needs --master-service"))
            .to_owned();
        let (namespace, name) = target.split_once('/').expect("NAMESPACE/NAME");
        let service: Service = render.get("Service", Some(namespace), name);
        let spec = service.spec.expect("service spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "{who}: headless: agents dial the endpoint itself");
        assert_ne!(spec.publish_not_ready_addresses, Some(true), "{who}: only the Ready leader is an endpoint");
        let port = spec.ports.iter().flatten().find(|p| p.name.as_deref() == Some("southbound"));
        let port = port.unwrap_or_else(|| panic!("{who}: {target} has no port `southbound`"));
        assert_eq!(port.target_port, Some(IntOrString::String("southbound".into())), "{who}");
        let (deployment, master_spec) = master(&render);
        let master_port = container(&master_spec, "master")
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("southbound"))
            .map(|p| p.container_port);
        assert_eq!(master_port, Some(port.port), "{who}: service port = master's southbound port");
        let selector = spec.selector.unwrap_or_default();
        let labels = deployment.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels).unwrap_or_default();
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{who}: {target} selects the master's pods"
        );
    }
}

/// (API group, resource, verb) triples of some rules; `name` is appended when restricted.
fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    match &rule.resource_names {
                        Some(names) => names.iter().for_each(|n| {
                            out.insert(format!("{group}/{resource}/{verb}/{n}"));
                        }),
                        None => {
                            out.insert(format!("{group}/{resource}/{verb}"));
                        }
                    }
                }
            }
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn rbac_grants_exactly_what_the_binaries_call_and_is_bound_to_them() {
    for render in renders() {
        let who = format!("render {}", render.name);
        let namespace = render.namespace();
        for o in render.of_kind("ClusterRole").into_iter().chain(render.of_kind("Role")) {
            for rule in o.value["rules"].as_array().into_iter().flatten() {
                let text = rule.to_string();
                assert!(!text.contains("\"*\""), "{who}: {} {} has a wildcard: {text}", o.kind(), o.name());
                // Only the master's own Role touches Secrets: its key Secret (create, and get
                // by name); checked exactly below.
                let masters_role = o.kind() == "Role" && o.label("app.kubernetes.io/component") == Some("master");
                assert!(masters_role || !text.contains("secrets"), "{who}: {} {} reads secrets", o.kind(), o.name());
            }
        }
        let master_cr: ClusterRole = render.component("ClusterRole", "master");
        assert_eq!(
            grants(&master_cr.rules.unwrap_or_default()),
            set(&[
                "/nodes/get",
                "/nodes/list",
                "/nodes/watch",
                "/nodes/patch",
                "/pods/get",
                "/pods/list",
                "/pods/watch",
                "/pods/patch",
                "/namespaces/list",
                "/namespaces/watch",
                "/services/list",
                "/services/watch",
                "discovery.k8s.io/endpointslices/list",
                "discovery.k8s.io/endpointslices/watch",
                "networking.k8s.io/networkpolicies/list",
                "networking.k8s.io/networkpolicies/watch",
                "events.k8s.io/events/create",
                "events.k8s.io/events/patch",
                "authentication.k8s.io/tokenreviews/create",
            ]),
            "{who}: master ClusterRole"
        );
        let (_, master_spec) = master(&render);
        let lease =
            Flags::of(container(&master_spec, "master")).value("--lease-name").unwrap_or("skein-master").to_owned();
        let master_role: Role = render.component("Role", "master");
        assert_eq!(master_role.metadata.namespace.as_deref(), Some(namespace.as_str()), "{who}: Lease namespace");
        assert_eq!(
            grants(&master_role.rules.unwrap_or_default()),
            set(&[
                "coordination.k8s.io/leases/create",
                &format!("coordination.k8s.io/leases/get/{lease}"),
                &format!("coordination.k8s.io/leases/update/{lease}"),
                "/secrets/create",
                "/secrets/get/skein-master-keys",
                "/configmaps/create",
                "/configmaps/get/skein-southbound-ca",
                "/configmaps/update/skein-southbound-ca",
            ]),
            "{who}: master Role (leader election on Lease {lease})"
        );
        let agent_cr: ClusterRole = render.component("ClusterRole", "agent");
        assert_eq!(
            grants(&agent_cr.rules.unwrap_or_default()),
            set(&[
                "/nodes/get",
                "/nodes/patch",
                "/pods/list",
                "/pods/watch",
                "events.k8s.io/events/create",
                "events.k8s.io/events/patch",
            ]),
            "{who}: agent ClusterRole"
        );
        let agent_role: Role = render.component("Role", "agent");
        assert_eq!(
            grants(&agent_role.rules.unwrap_or_default()),
            set(&["discovery.k8s.io/endpointslices/list", "/configmaps/get/skein-southbound-ca"]),
            "{who}: agent Role"
        );
        // Each binding gives its role to the service account the workload runs as.
        let (_, agent_spec) = agent(&render);
        for (component, spec) in [("master", &master_spec), ("agent", &agent_spec)] {
            let account = spec.service_account_name.clone().expect("serviceAccountName");
            assert!(
                render.find("ServiceAccount", Some(&namespace), &account).is_some(),
                "{who}: no ServiceAccount {account}"
            );
            for (binding_kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
                let binding = render
                    .of_kind(binding_kind)
                    .into_iter()
                    .find(|o| o.label("app.kubernetes.io/component") == Some(component))
                    .unwrap_or_else(|| panic!("{who}: no {binding_kind} for the {component}"));
                let v = &binding.value;
                assert_eq!(v["roleRef"]["kind"], role_kind, "{who}");
                let role_ns = if role_kind == "Role" { binding.namespace() } else { None };
                assert!(
                    render.find(role_kind, role_ns, v["roleRef"]["name"].as_str().unwrap_or_default()).is_some(),
                    "{who}: {binding_kind} {} names a missing {role_kind}",
                    binding.name()
                );
                let subjects = v["subjects"].as_array().cloned().unwrap_or_default();
                assert_eq!(subjects.len(), 1, "{who}: {binding_kind} {}", binding.name());
                assert_eq!(subjects[0]["kind"], "ServiceAccount");
                assert_eq!(subjects[0]["name"], account.as_str(), "{who}: {binding_kind} {}", binding.name());
                assert_eq!(subjects[0]["namespace"], namespace.as_str(), "{who}: {binding_kind} {}", binding.name());
            }
        }
    }
}

#[test]
fn the_own_node_policy_names_the_agents_service_account() {
    let mut checked = 0;
    for render in renders() {
        let Some(policy) =
            render.of_kind("ValidatingAdmissionPolicy").into_iter().find(|p| p.name().ends_with("-own-node"))
        else {
            continue;
        };
        let (_, spec) = agent(&render);
        let user = format!(
            "system:serviceaccount:{}:{}",
            render.namespace(),
            spec.service_account_name.as_deref().unwrap_or_default()
        );
        let condition = policy.value["spec"]["matchConditions"][0]["expression"].as_str().unwrap_or_default();
        assert!(
            condition.contains(&format!("'{user}'")),
            "render {}: the policy must match {user}: {condition}",
            render.name
        );
        let binding = render.of_kind("ValidatingAdmissionPolicyBinding");
        assert!(
            binding.iter().any(|b| b.value["spec"]["policyName"] == policy.name()
                && b.value["spec"]["validationActions"] == serde_json::json!(["Deny"])),
            "render {}: the policy must be bound with Deny",
            render.name
        );
        checked += 1;
    }
    assert!(checked > 0, "the default render has the policy");
}

#[test]
fn every_reference_in_a_pod_resolves_within_the_render() {
    for render in renders() {
        let namespace = render.namespace();
        for (workload, spec) in render.pod_specs() {
            let who = format!("render {}: {workload}", render.name);
            let volumes: BTreeSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
            for v in spec.volumes.iter().flatten() {
                if let Some(cm) = &v.config_map {
                    assert!(
                        render.find("ConfigMap", Some(&namespace), &cm.name).is_some(),
                        "{who}: ConfigMap {}",
                        cm.name
                    );
                }
            }
            for c in all_containers(&spec) {
                let env = env(c);
                for e in env.values() {
                    if let Some(r) = e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()) {
                        let cm = render
                            .find("ConfigMap", Some(&namespace), &r.name)
                            .unwrap_or_else(|| panic!("{who}: {} refers to a missing ConfigMap {}", e.name, r.name));
                        assert!(
                            cm.value["data"][&r.key].is_string(),
                            "{who}: {} refers to a missing key {}",
                            e.name,
                            r.key
                        );
                    }
                }
                for arg in c.args.iter().flatten().chain(c.command.iter().flatten()) {
                    for var in var_refs(arg) {
                        // Kubernetes leaves an undefined $(VAR) as it is: the flag would get the text.
                        assert!(env.contains_key(&var), "{who}: {} uses $({var}), not in its env", c.name);
                    }
                }
                for m in c.volume_mounts.iter().flatten() {
                    assert!(volumes.contains(m.name.as_str()), "{who}: {} mounts a missing volume {}", c.name, m.name);
                }
                let ports: BTreeSet<String> = c.ports.iter().flatten().filter_map(|p| p.name.clone()).collect();
                for probe in [&c.liveness_probe, &c.readiness_probe].into_iter().flatten() {
                    if let Some(IntOrString::String(name)) = probe.http_get.as_ref().map(|h| &h.port) {
                        assert!(ports.contains(name), "{who}: {} probes a missing port {name}", c.name);
                    }
                }
            }
        }
    }
}

#[test]
fn network_settings_come_from_the_config_map() {
    for render in renders() {
        let who = format!("render {}", render.name);
        let data = config_map(&render);
        for key in [
            "cluster-cidr",
            "node-subnet-prefix",
            "cluster-cidr-node-prefix",
            "service-cidr",
            "join-subnet",
            "node-port-range",
            "mtu",
            "encap",
        ] {
            assert!(data.contains_key(key), "{who}: the ConfigMap lacks {key}");
        }
        let (_, master_spec) = master(&render);
        let c = container(&master_spec, "master");
        let flags = Flags::of(c);
        for (flag, key) in
            [("--cluster-cidr", "cluster-cidr-node-prefix"), ("--join-subnet", "join-subnet"), ("--mtu", "mtu")]
        {
            let value = flags.value(flag).unwrap_or_else(|| panic!("{who}: master {flag}"));
            assert_eq!(expanded(&render, c, value), data[key], "{who}: master {flag} is the ConfigMap's {key}");
        }
        let (_, agent_spec) = agent(&render);
        let c = container(&agent_spec, "agent");
        let flags = Flags::of(c);
        for (flag, key) in [
            ("--cluster-cidr", "cluster-cidr"),
            ("--service-cidr", "service-cidr"),
            ("--node-port-range", "node-port-range"),
        ] {
            let value = flags.value(flag).unwrap_or_else(|| panic!("{who}: agent {flag}"));
            assert_eq!(expanded(&render, c, value), data[key], "{who}: agent {flag} is the ConfigMap's {key}");
        }
        // The master's CIDR=LEN list is the pools with their node prefixes, in order, and each
        // node prefix is longer than its pool's.
        let pools: Vec<&str> = data["cluster-cidr"].split(',').collect();
        let prefixes: Vec<&str> = data["node-subnet-prefix"].split(',').collect();
        assert_eq!(pools.len(), prefixes.len(), "{who}: one node prefix per pool");
        let zipped: Vec<String> = pools.iter().zip(&prefixes).map(|(p, l)| format!("{p}={l}")).collect();
        assert_eq!(data["cluster-cidr-node-prefix"], zipped.join(","), "{who}: cluster-cidr-node-prefix in step");
        for (cidr, len) in pools.iter().zip(&prefixes) {
            let pool: u8 = cidr.split_once('/').and_then(|(_, l)| l.parse().ok()).expect("a prefix length");
            let node: u8 = len.parse().expect("a node prefix");
            assert!(node > pool, "{who}: node subnets /{node} must be smaller than the pool {cidr}");
        }
        let mtu: u32 = data["mtu"].parse().expect("mtu");
        assert!(mtu == 0 || (576..=9000).contains(&mtu), "{who}: mtu {mtu} (0: each node's uplink decides)");
    }
}

#[test]
fn one_image_with_a_pinned_tag_runs_every_container() {
    for render in renders() {
        let mut images = BTreeSet::new();
        for (_, spec) in render.pod_specs() {
            for c in all_containers(&spec) {
                images.insert(c.image.clone().unwrap_or_default());
            }
        }
        assert_eq!(images.len(), 1, "render {}: one image for every container: {images:?}", render.name);
        let image = images.into_iter().next().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "render {}: pinned tag: {image}",
            render.name
        );
    }
    // The default tag follows the release: the chart's appVersion is the workspace version.
    let default = &renders()[0];
    let (_, spec) = agent(default);
    assert_eq!(
        container(&spec, "agent").image.as_deref(),
        Some(format!("ghcr.io/skein-net/skein:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "charts/skein/Chart.yaml appVersion must be the workspace version"
    );
}

#[test]
fn objects_carry_the_recommended_labels_and_selectors_match_their_pods() {
    for render in renders() {
        for o in &render.objects {
            for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"] {
                assert!(o.label(key).is_some(), "render {}: {} {} lacks label {key}", render.name, o.kind(), o.name());
            }
        }
        for o in render.of_kind("Deployment").into_iter().chain(render.of_kind("DaemonSet")) {
            let selector = o.value["spec"]["selector"]["matchLabels"].as_object().cloned().unwrap_or_default();
            let labels = &o.value["spec"]["template"]["metadata"]["labels"];
            assert!(!selector.is_empty(), "render {}: {} {}: selector", render.name, o.kind(), o.name());
            for (k, v) in selector {
                assert_eq!(&labels[&k], &v, "render {}: {} {}: template label {k}", render.name, o.kind(), o.name());
            }
        }
    }
}

#[test]
fn the_examples_fit_skeins_defaults() {
    let root = common::repo_root().join("manifests/examples");
    let job = common::load_file(&root.join("allreduce-job.yaml"));
    let job = job.iter().find(|o| o.kind() == "Job").expect("the allreduce Job");
    let spec = &job.value["spec"];
    assert_eq!(spec["parallelism"], spec["completions"], "one pod per rank");
    let c = &spec["template"]["spec"]["containers"][0];
    let world = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "SKEIN_WORLD_SIZE")
        .and_then(|e| e["value"].as_str())
        .and_then(|v| v.parse::<i64>().ok());
    assert_eq!(world, spec["completions"].as_i64(), "SKEIN_WORLD_SIZE = completions");
    assert_eq!(
        c["resources"]["limits"][DEFAULT_RESOURCE_NAME], 1,
        "the Job asks for the device plugin's default resource {DEFAULT_RESOURCE_NAME}"
    );

    let demo = common::load_file(&root.join("demo-app.yaml"));
    let deployment = demo.iter().find(|o| o.kind() == "Deployment").expect("the demo Deployment");
    let pod_labels = &deployment.value["spec"]["template"]["metadata"]["labels"];
    let ports: Vec<&str> = deployment.value["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let services: Vec<&common::Object> = demo.iter().filter(|o| o.kind() == "Service").collect();
    let types: BTreeSet<&str> = services.iter().filter_map(|s| s.value["spec"]["type"].as_str()).collect();
    assert_eq!(types, BTreeSet::from(["ClusterIP", "NodePort"]), "a ClusterIP and a NodePort Service");
    for s in services {
        for (k, v) in s.value["spec"]["selector"].as_object().cloned().unwrap_or_default() {
            assert_eq!(&pod_labels[&k], &v, "Service {} selects the demo pods", s.name());
        }
        for p in s.value["spec"]["ports"].as_array().into_iter().flatten() {
            let target = p["targetPort"].as_str().unwrap_or_default();
            assert!(ports.contains(&target), "Service {}: targetPort {target} is a named port of the pods", s.name());
        }
    }
}

#[test]
fn agents_prove_their_node_with_a_projected_token_and_only_the_master_writes_pod_annotations() {
    for render in renders() {
        let who = format!("render {}", render.name);
        let (_, spec) = agent(&render);
        let flags = Flags::of(container(&spec, "agent"));
        let token_file = flags.value("--token-file").unwrap_or_else(|| panic!("{who}: the agent has no --token-file"));
        let (dir, file) = token_file.rsplit_once('/').expect("a path");
        let mount = container(&spec, "agent")
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("{who}: nothing is mounted at {dir}"));
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume");
        let source = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.iter().flatten().find_map(|s| s.service_account_token.clone()))
            .unwrap_or_else(|| panic!("{who}: {} is not a projected ServiceAccount token", volume.name));
        assert_eq!(source.audience.as_deref(), Some("skein.dev/southbound"), "{who}");
        assert_eq!(source.path, file, "{who}");
        assert!(source.expiration_seconds.is_some_and(|s| (600..=86_400).contains(&s)), "{who}");
        let (_, master_spec) = master(&render);
        let master_flags = Flags::of(container(&master_spec, "master"));
        let agent_account = format!("{}/{}", render.namespace(), spec.service_account_name.clone().unwrap_or_default());
        assert_eq!(master_flags.value("--agent-service-account"), Some(agent_account.as_str()), "{who}");
        assert_eq!(
            flags.value("--master-ca-configmap"),
            Some(format!("{}/skein-southbound-ca", render.namespace()).as_str()),
            "{who}"
        );

        let policy = render
            .of_kind("ValidatingAdmissionPolicy")
            .into_iter()
            .find(|p| p.name().ends_with("-pod-annotations"))
            .unwrap_or_else(|| panic!("{who}: no pod annotation policy"));
        let master_user = format!(
            "system:serviceaccount:{}:{}",
            render.namespace(),
            master_spec.service_account_name.as_deref().unwrap_or_default()
        );
        let condition = policy.value["spec"]["matchConditions"][0]["expression"].as_str().unwrap_or_default();
        assert!(condition.contains(&format!("!= '{master_user}'")), "{who}: {condition}");
        assert!(
            render
                .of_kind("ValidatingAdmissionPolicyBinding")
                .iter()
                .any(|b| b.value["spec"]["policyName"] == policy.name()
                    && b.value["spec"]["validationActions"] == serde_json::json!(["Deny"])),
            "{who}: the pod annotation policy must be bound with Deny"
        );
    }
}
