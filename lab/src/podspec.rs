//! What a pod spec asks of the kubelet, resolved the way kubelet resolves it, into what the
//! container runtime is given over CRI: which image runs and how (the lab's images), each
//! container's command, arguments and environment (`value`, `fieldRef`, `$(VAR)` expansion),
//! its mounts (`hostPath` and `emptyDir` volumes, the pod's managed `/etc/hosts`), its
//! capabilities, the sandbox's DNS configuration from the pod's `dnsPolicy`, and what a
//! container's exit means under the pod's `restartPolicy`. Pure but for the volume
//! directories it prepares; the lifecycle is in `kubelet`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume};
use kube::ResourceExt;
use skein_proto::cri::v1 as cri_api;

use crate::image::IMAGE_REF;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where the lab mounts the workspace's binaries in the images it assembles.
pub const SKEIN_BIN_DIR: &str = "/usr/local/bin";
/// `PATH` of every container the lab runs, unless the pod sets one (the base image's own).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A Skein image the lab assembles instead of pulling: its base image plus binaries of the
/// workspace, mounted read-only (the same binaries the lab runs as master, agent and CNI
/// plugin, so a pod runs exactly what was built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabImage {
    /// The image's repository (`ghcr.io/skein-net/skein-allreduce`); any tag or digest.
    pub repository: &'static str,
    /// The binaries it holds: name in [`SKEIN_BIN_DIR`] → host file.
    pub binaries: Vec<(String, PathBuf)>,
    /// Its `ENTRYPOINT`, used when a container gives no `command`.
    pub entrypoint: Option<Vec<String>>,
}

/// The images the lab knows how to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabImages {
    /// The assembled images.
    pub assembled: Vec<LabImage>,
}

impl LabImages {
    /// Skein's images, assembled from the binaries in `bin_dir` (the cargo target directory
    /// the lab runs from): `ghcr.io/skein-net/skein` (`skein-master`, `skein-agent`,
    /// `skein-cni`, like the Containerfile's image) and `ghcr.io/skein-net/skein-allreduce`
    /// (`skein-allreduce`, its entrypoint).
    pub fn skein(bin_dir: &Path) -> LabImages {
        let bin = |name: &str| (name.to_string(), bin_dir.join(name));
        LabImages {
            assembled: vec![
                LabImage {
                    repository: "ghcr.io/skein-net/skein",
                    binaries: vec![bin("skein-master"), bin("skein-agent"), bin("skein-cni")],
                    entrypoint: None,
                },
                LabImage {
                    repository: "ghcr.io/skein-net/skein-allreduce",
                    binaries: vec![bin("skein-allreduce")],
                    entrypoint: Some(vec!["skein-allreduce".into()]),
                },
            ],
        }
    }

    /// The assembled image `image` names, if any.
    pub fn find(&self, image: &str) -> Option<&LabImage> {
        let repository = repository(image);
        self.assembled.iter().find(|i| i.repository == repository)
    }
}

/// An image reference's repository: without `@digest` and `:tag` (a `:` before the last `/`
/// is a registry port), with Docker Hub's implied names spelled out.
pub fn repository(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    let name = match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    }
}

/// How the lab runs a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodWorkload {
    /// As its spec says: every container's image is one the lab can run.
    Spec,
    /// The lab's echo server on the pod's ports, in one container of the lab's image: none of
    /// its images is one the lab can run (the demo's pods, whose images only name a role).
    Echo,
}

/// Decides how a pod runs, given the images the node's runtime holds. A pod mixing images
/// the lab can and cannot run is refused, naming the image.
pub fn classify(pod: &Pod, images: &LabImages, present: &dyn Fn(&str) -> bool) -> Result<PodWorkload, String> {
    let runnable = |image: &str| images.find(image).is_some() || present(image) || image == IMAGE_REF;
    let all: Vec<&Container> = spec_containers(pod).collect();
    let known: Vec<bool> = all.iter().map(|c| runnable(c.image.as_deref().unwrap_or(""))).collect();
    if known.iter().all(|k| !k) {
        return Ok(PodWorkload::Echo);
    }
    if let Some((c, _)) = all.iter().zip(&known).find(|(_, k)| !**k) {
        return Err(format!(
            "container {:?}: image {:?} is neither in the node's runtime nor one the lab assembles ({}), and other containers of the pod run as specified",
            c.name,
            c.image.as_deref().unwrap_or(""),
            images.assembled.iter().map(|i| i.repository).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(PodWorkload::Spec)
}

/// The pod's init containers then its containers.
fn spec_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
}

/// The pod's `restartPolicy` (`Always` when unset, as the API server defaults it).
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
}

/// Whether a container that exited with `exit_code` is started again.
pub fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The phase of a pod whose containers ended with these codes (`None`: still running or
/// to be restarted): Succeeded when all exited 0, Failed when all are done and one failed,
/// Running otherwise.
pub fn phase(exit_codes: &[Option<i32>]) -> &'static str {
    if exit_codes.iter().any(Option::is_none) {
        "Running"
    } else if exit_codes.iter().all(|c| *c == Some(0)) {
        "Succeeded"
    } else {
        "Failed"
    }
}

/// What the kubelet knows about a pod when it builds a container: for `fieldRef`s, volumes
/// and the hosts file.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its node.
    pub node: &'a str,
    /// The node's IP.
    pub host_ip: String,
    /// The pod's IPs (the node's for host-network pods).
    pub pod_ips: Vec<String>,
    /// The pod's directory on the node (volumes, the hosts file).
    pub pod_dir: PathBuf,
}

/// A container's configuration could not be built (kubelet: `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container {container:?}: {message}")]
pub struct ConfigError {
    /// The container.
    pub container: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// `$(VAR)` expansion as kubelet does it (`third_party/forked/golang/expansion`): a defined
/// variable is replaced, `$$` is a literal `$`, anything else is left as written.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldRef` (the paths kubelet resolves for env).
pub fn field_value(ctx: &PodContext<'_>, path: &str) -> Result<String, String> {
    let pod = ctx.pod;
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    if let Some(key) = quoted("metadata.labels") {
        return Ok(pod.labels().get(&key).cloned().unwrap_or_default());
    }
    if let Some(key) = quoted("metadata.annotations") {
        return Ok(pod.annotations().get(&key).cloned().unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => ctx.node.to_string(),
        "spec.serviceAccountName" => {
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => ctx.pod_ips.join(","),
        other => return Err(format!("fieldRef {other:?} is not a field the downward API offers for env")),
    })
}

/// One env entry's value, or `None` when it is optional and missing.
fn env_value(ctx: &PodContext<'_>, var: &EnvVar, defined: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let Some(source) = var.value_from.as_ref() else {
        let raw = var.value.clone().unwrap_or_default();
        return Ok(Some(expand(&raw, &|name| defined.get(name).cloned())));
    };
    if let Some(field) = &source.field_ref {
        return field_value(ctx, &field.field_path).map(Some);
    }
    let (what, optional) = if let Some(r) = &source.config_map_key_ref {
        ("configMapKeyRef", r.optional)
    } else if let Some(r) = &source.secret_key_ref {
        ("secretKeyRef", r.optional)
    } else if source.resource_field_ref.is_some() {
        ("resourceFieldRef", None)
    } else {
        ("valueFrom", None)
    };
    if optional == Some(true) {
        return Ok(None);
    }
    Err(format!("env {}: {what} is not served by the lab (its API has no ConfigMaps or Secrets)", var.name))
}

/// The container's environment, in order: what the device plugins gave (overridden by the
/// spec), `JOB_COMPLETION_INDEX`-style entries from the spec, then `PATH` if nobody set one.
pub fn container_env(
    ctx: &PodContext<'_>,
    container: &Container,
    from_devices: &[cri_api::KeyValue],
) -> Result<Vec<(String, String)>, ConfigError> {
    let error = |message: String| ConfigError { container: container.name.clone(), message };
    if let Some(from) = container.env_from.as_ref().filter(|f| !f.is_empty()) {
        let required = from.iter().any(|f| {
            f.config_map_ref.as_ref().is_some_and(|r| r.optional != Some(true))
                || f.secret_ref.as_ref().is_some_and(|r| r.optional != Some(true))
        });
        if required {
            return Err(error("envFrom: ConfigMaps and Secrets are not served by the lab".into()));
        }
    }
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    let mut ordered: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String, defined: &mut BTreeMap<String, String>| {
        defined.insert(name.to_string(), value.clone());
        ordered.retain(|(n, _)| n != name);
        ordered.push((name.to_string(), value));
    };
    for kv in from_devices {
        set(&kv.key, kv.value.clone(), &mut defined);
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(ctx, var, &defined).map_err(error)? {
            set(&var.name, value, &mut defined);
        }
    }
    if !defined.contains_key("PATH") {
        set("PATH", DEFAULT_PATH.to_string(), &mut defined);
    }
    Ok(ordered)
}

/// Command and args after `$(VAR)` expansion, with the image's entrypoint when the container
/// gives no command (the runtime applies an image's own `ENTRYPOINT`/`CMD`; assembled images
/// have theirs here).
pub fn command_and_args(
    container: &Container,
    image: Option<&LabImage>,
    env: &[(String, String)],
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let lookup = |name: &str| env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let expand_all = |list: &[String]| list.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let args = expand_all(container.args.as_deref().unwrap_or_default());
    let command = match (container.command.as_deref().filter(|c| !c.is_empty()), image) {
        (Some(command), _) => expand_all(command),
        (None, Some(image)) => match &image.entrypoint {
            Some(entrypoint) => entrypoint.clone(),
            None => {
                return Err(ConfigError {
                    container: container.name.clone(),
                    message: format!(
                        "image {:?} has no entrypoint (the lab assembles it from {}): give the container a command",
                        container.image.as_deref().unwrap_or(""),
                        image.binaries.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        },
        (None, None) => Vec::new(),
    };
    Ok((command, args))
}

/// Where a volume lives on the node, creating what the volume type says must be created.
pub fn volume_path(ctx: &PodContext<'_>, volume: &Volume) -> Result<PathBuf, String> {
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if !path.is_absolute() {
            return Err(format!("volume {:?}: hostPath {:?} is not absolute", volume.name, host.path));
        }
        let meta = std::fs::metadata(&path);
        let kind = host.type_.as_deref().unwrap_or("");
        let wrong = |what: &str| {
            Err(format!("volume {:?}: hostPath type check failed: {} is not {what}", volume.name, host.path))
        };
        use std::os::unix::fs::FileTypeExt;
        match kind {
            "" => {}
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("volume {:?}: creating {}: {e}", volume.name, host.path))?;
            }
            "FileOrCreate" if meta.is_err() => {
                std::fs::File::create(&path)
                    .map_err(|e| format!("volume {:?}: creating {}: {e}", volume.name, host.path))?;
            }
            "FileOrCreate" | "File" if !meta.as_ref().is_ok_and(|m| m.is_file()) => return wrong("a file"),
            "Directory" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => return wrong("a directory"),
            "Socket" if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => return wrong("a socket"),
            "CharDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => {
                return wrong("a character device");
            }
            "BlockDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => {
                return wrong("a block device");
            }
            "File" | "Directory" | "Socket" | "CharDevice" | "BlockDevice" | "FileOrCreate" => {}
            other => return Err(format!("volume {:?}: hostPath type {other:?} is not a hostPath type", volume.name)),
        }
        return Ok(path);
    }
    if volume.empty_dir.is_some() {
        let path = ctx.pod_dir.join("volumes/kubernetes.io~empty-dir").join(&volume.name);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("volume {:?}: creating {}: {e}", volume.name, path.display()))?;
        return Ok(path);
    }
    Err(format!(
        "volume {:?}: only hostPath and emptyDir volumes are served by the lab (its API has no ConfigMaps, Secrets or claims)",
        volume.name
    ))
}

/// The container's mounts: its `volumeMounts` (with `subPath`), and the pod's hosts file.
pub fn container_mounts(ctx: &PodContext<'_>, container: &Container) -> Result<Vec<cri_api::Mount>, ConfigError> {
    let error = |message: String| ConfigError { container: container.name.clone(), message };
    let volumes: BTreeMap<&str, &Volume> =
        ctx.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).map(|v| (v.name.as_str(), v)).collect();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(mount.name.as_str())
            .ok_or_else(|| error(format!("volumeMounts: no volume named {:?}", mount.name)))?;
        let mut host = volume_path(ctx, volume).map_err(error)?;
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                return Err(error(format!(
                    "volumeMounts {:?}: subPath {sub:?} must be a relative path inside the volume",
                    mount.name
                )));
            }
            host = host.join(sub);
        }
        mounts.push(cri_api::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: mount.read_only.unwrap_or(false),
        });
    }
    if !host_network(ctx.pod) && !mounts.iter().any(|m| m.container_path == "/etc/hosts") {
        mounts.push(cri_api::Mount {
            container_path: "/etc/hosts".into(),
            host_path: ctx.pod_dir.join("etc-hosts").display().to_string(),
            readonly: false,
        });
    }
    Ok(mounts)
}

/// Whether the pod uses the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// The pod's managed `/etc/hosts`, as kubelet writes it: loopback entries, then the pod's
/// own name — `<hostname>.<subdomain>.<namespace>.svc.<domain>` and `<hostname>` when it has
/// a subdomain, else its hostname (or name) —, then its `hostAliases`.
pub fn hosts_file(pod: &Pod, ips: &[String]) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    let hostname = spec.and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| pod.name_any());
    let subdomain = spec.and_then(|s| s.subdomain.clone()).filter(|s| !s.is_empty());
    for ip in ips {
        match &subdomain {
            Some(sub) => text.push_str(&format!(
                "{ip}\t{hostname}.{sub}.{}.svc.{CLUSTER_DOMAIN}\t{hostname}\n",
                pod.namespace().unwrap_or_default()
            )),
            None => text.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec.and_then(|s| s.host_aliases.as_ref()).filter(|a| !a.is_empty());
    if let Some(aliases) = aliases {
        text.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.clone().unwrap_or_default().join("\t");
            text.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    text
}

/// The sandbox's hostname: the pod's `hostname`, else its name (empty for host-network pods,
/// which keep the node's).
pub fn sandbox_hostname(pod: &Pod) -> String {
    if host_network(pod) {
        return String::new();
    }
    pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| pod.name_any())
}

/// The sandbox's DNS configuration from the pod's `dnsPolicy` (`ClusterFirst` by default:
/// the cluster DNS and the namespace's search path, `ndots:5`; `Default` and host-network
/// `ClusterFirst`: the node's, which the runtime copies when given none; `None`: only the
/// pod's `dnsConfig`), with the pod's `dnsConfig` merged in.
pub fn dns_config(pod: &Pod, cluster_dns: Option<IpAddr>) -> Option<cri_api::DnsConfig> {
    let spec = pod.spec.as_ref();
    let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network(pod),
        _ => false,
    };
    let mut config = cri_api::DnsConfig::default();
    if cluster && let Some(server) = cluster_dns {
        let namespace = pod.namespace().unwrap_or_default();
        config.servers.push(server.to_string());
        config.searches = vec![
            format!("{namespace}.svc.{CLUSTER_DOMAIN}"),
            format!("svc.{CLUSTER_DOMAIN}"),
            CLUSTER_DOMAIN.to_string(),
        ];
        config.options.push("ndots:5".into());
    }
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        config.servers.extend(extra.nameservers.iter().flatten().cloned());
        config.searches.extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else { continue };
            config.options.retain(|o| o.split(':').next() != Some(name));
            config.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_string(),
            });
        }
    }
    let empty = config.servers.is_empty() && config.searches.is_empty() && config.options.is_empty();
    if policy == "None" || !empty { Some(config) } else { None }
}

/// The container's capabilities and privilege from its `securityContext`.
pub fn security(container: &Container) -> (Option<cri_api::Capability>, bool) {
    let context = container.security_context.as_ref();
    let privileged = context.and_then(|c| c.privileged).unwrap_or(false);
    let capabilities = context.and_then(|c| c.capabilities.as_ref()).map(|c| cri_api::Capability {
        add_capabilities: c.add.clone().unwrap_or_default(),
        drop_capabilities: c.drop.clone().unwrap_or_default(),
    });
    (capabilities, privileged)
}

/// Whether any container of the pod is privileged (the sandbox must be too).
pub fn any_privileged(pod: &Pod) -> bool {
    spec_containers(pod).any(|c| security(c).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "train-0-abcde", "namespace": "ml", "uid": "u-1",
                         "labels": {"app": "train"}, "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn ctx<'a>(pod: &'a Pod, dir: &Path) -> PodContext<'a> {
        PodContext {
            pod,
            node: "node2",
            host_ip: "172.18.0.12".into(),
            pod_ips: vec!["10.244.2.7".into()],
            pod_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn image_references_reduce_to_their_repository() {
        assert_eq!(repository("ghcr.io/skein-net/skein-allreduce:latest"), "ghcr.io/skein-net/skein-allreduce");
        assert_eq!(repository("ghcr.io/skein-net/skein@sha256:abc"), "ghcr.io/skein-net/skein");
        assert_eq!(repository("localhost:5000/a/b:1"), "localhost:5000/a/b");
        assert_eq!(repository("busybox"), "docker.io/library/busybox");
        assert_eq!(repository("skein-lab/echo"), "docker.io/skein-lab/echo");
        let images = LabImages::skein(Path::new("/t"));
        let allreduce = images.find("ghcr.io/skein-net/skein-allreduce:latest").unwrap();
        assert_eq!(allreduce.binaries, [("skein-allreduce".to_string(), PathBuf::from("/t/skein-allreduce"))]);
        assert!(images.find("ghcr.io/skein-net/skein:0.1.0").is_some());
        assert!(images.find("ghcr.io/skein-net/other").is_none());
    }

    #[test]
    fn pods_run_as_specified_only_when_every_image_is_runnable() {
        let images = LabImages::skein(Path::new("/t"));
        let none = |_: &str| false;
        let echo = pod(json!({"containers": [{"name": "a", "image": "skein-lab/echo"}]}));
        assert_eq!(classify(&echo, &images, &none), Ok(PodWorkload::Echo));
        let spec = pod(json!({"containers": [{"name": "a", "image": "ghcr.io/skein-net/skein-allreduce:latest"},
                                             {"name": "b", "image": IMAGE_REF}]}));
        assert_eq!(classify(&spec, &images, &none), Ok(PodWorkload::Spec));
        let imported = pod(json!({"containers": [{"name": "a", "image": "example.com/tool:1"}]}));
        assert_eq!(classify(&imported, &images, &|i| i == "example.com/tool:1"), Ok(PodWorkload::Spec));
        let mixed = pod(json!({"initContainers": [{"name": "i", "image": "nginx"}],
                               "containers": [{"name": "a", "image": "ghcr.io/skein-net/skein:1"}]}));
        let error = classify(&mixed, &images, &none).unwrap_err();
        assert!(error.contains("\"i\"") && error.contains("nginx"), "{error}");
    }

    #[test]
    fn restart_policies_decide_restarts_and_phase() {
        assert!(restarts("Always", 0) && restarts("Always", 1));
        assert!(!restarts("OnFailure", 0) && restarts("OnFailure", 2));
        assert!(!restarts("Never", 0) && !restarts("Never", 1));
        assert_eq!(phase(&[Some(0), None]), "Running");
        assert_eq!(phase(&[Some(0), Some(0)]), "Succeeded");
        assert_eq!(phase(&[Some(0), Some(137)]), "Failed");
        assert_eq!(restart_policy(&pod(json!({"containers": []}))), "Always");
    }

    #[test]
    fn expansion_follows_kubelet() {
        let vars = |name: &str| match name {
            "A" => Some("x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("$(A)-$(A)", &vars), "x-x");
        assert_eq!(expand("$$(A) $$ $", &vars), "$(A) $ $");
        assert_eq!(expand("$(MISSING)/$(EMPTY)/$(", &vars), "$(MISSING)//$(");
        assert_eq!(expand("a$b", &vars), "a$b");
        assert_eq!(expand("", &vars), "");
    }

    #[test]
    fn env_resolves_values_field_refs_and_device_entries() {
        let p = pod(json!({"containers": [{"name": "rank", "env": [
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "WHERE", "value": "$(NS)/$(INDEX) on $(NODE)"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SKEIN_RDMA_NETDEVS", "value": "override"},
            {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k", "optional": true}}}
        ]}]}));
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&p, dir.path());
        let devices = [
            cri_api::KeyValue { key: "SKEIN_RDMA_DEVICES".into(), value: "mlx5_0".into() },
            cri_api::KeyValue { key: "SKEIN_RDMA_NETDEVS".into(), value: "ib0".into() },
        ];
        let env = container_env(&c, &p.spec.as_ref().unwrap().containers[0], &devices).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NS"), Some("ml"));
        assert_eq!(get("INDEX"), Some("0"));
        assert_eq!(get("WHERE"), Some("ml/0 on $(NODE)"), "only earlier variables expand");
        assert_eq!(get("NODE"), Some("node2"));
        assert_eq!(get("IP"), Some("10.244.2.7"));
        assert_eq!(get("SKEIN_RDMA_DEVICES"), Some("mlx5_0"));
        assert_eq!(get("SKEIN_RDMA_NETDEVS"), Some("override"), "the spec overrides the plugin");
        assert_eq!(get("OPTIONAL"), None);
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));

        let bad = pod(json!({"containers": [{"name": "x", "env": [
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}));
        let error = container_env(&ctx(&bad, dir.path()), &bad.spec.as_ref().unwrap().containers[0], &[]).unwrap_err();
        assert!(error.to_string().contains("env K: secretKeyRef"), "{error}");
        let bad = pod(json!({"containers": [{"name": "x", "env": [
            {"name": "K", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}]}));
        let error = container_env(&ctx(&bad, dir.path()), &bad.spec.as_ref().unwrap().containers[0], &[]).unwrap_err();
        assert!(error.to_string().contains("spec.bogus"), "{error}");
    }

    #[test]
    fn commands_expand_and_fall_back_to_the_entrypoint() {
        let images = LabImages::skein(Path::new("/t"));
        let allreduce = images.find("ghcr.io/skein-net/skein-allreduce:1");
        let c: Container = serde_json::from_value(json!({"name": "r", "args": ["bench", "--rank", "$(R)"]})).unwrap();
        let env = vec![("R".to_string(), "1".to_string())];
        let (command, args) = command_and_args(&c, allreduce, &env).unwrap();
        assert_eq!(
            (command, args),
            (vec!["skein-allreduce".to_string()], vec!["bench".into(), "--rank".into(), "1".into()])
        );
        let c: Container = serde_json::from_value(json!({"name": "m", "image": "ghcr.io/skein-net/skein:1"})).unwrap();
        let error = command_and_args(&c, images.find("ghcr.io/skein-net/skein:1"), &[]).unwrap_err();
        assert!(error.message.contains("give the container a command"), "{error}");
        let (command, _) = command_and_args(&c, None, &[]).unwrap();
        assert!(command.is_empty(), "a runtime image keeps its own entrypoint");
    }

    #[test]
    fn volumes_mount_host_paths_empty_dirs_and_the_hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        let p = pod(json!({
            "volumes": [
                {"name": "usr", "hostPath": {"path": host.display().to_string(), "type": "Directory"}},
                {"name": "made", "hostPath": {"path": dir.path().join("made/here").display().to_string(), "type": "DirectoryOrCreate"}},
                {"name": "scratch", "emptyDir": {}}
            ],
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "usr", "mountPath": "/usr", "readOnly": true},
                {"name": "made", "mountPath": "/made", "subPath": "sub"},
                {"name": "scratch", "mountPath": "/scratch"}
            ]}]
        }));
        let pod_dir = dir.path().join("pod");
        let c = ctx(&p, &pod_dir);
        let mounts = container_mounts(&c, &p.spec.as_ref().unwrap().containers[0]).unwrap();
        let view: Vec<(&str, &str, bool)> =
            mounts.iter().map(|m| (m.container_path.as_str(), m.host_path.as_str(), m.readonly)).collect();
        assert_eq!(view[0], ("/usr", host.to_str().unwrap(), true));
        assert!(view[1].1.ends_with("made/here/sub"));
        assert!(dir.path().join("made/here").is_dir(), "DirectoryOrCreate creates it");
        assert!(view[2].1.ends_with("volumes/kubernetes.io~empty-dir/scratch"));
        assert_eq!(view[3].0, "/etc/hosts");
        assert!(view[3].1.ends_with("pod/etc-hosts"));

        let bad = pod(
            json!({"volumes": [{"name": "f", "hostPath": {"path": host.display().to_string(), "type": "File"}},
                                         {"name": "d", "hostPath": {"path": host.display().to_string()}},
                                         {"name": "cm", "configMap": {"name": "x"}}],
                             "containers": [{"name": "c", "volumeMounts": [{"name": "f", "mountPath": "/f"}]},
                                            {"name": "d", "volumeMounts": [{"name": "cm", "mountPath": "/cm"}]},
                                            {"name": "e", "volumeMounts": [{"name": "nope", "mountPath": "/n"}]},
                                            {"name": "s", "volumeMounts": [{"name": "d", "mountPath": "/s", "subPath": "../x"}]}]}),
        );
        let c = ctx(&bad, &pod_dir);
        let containers = &bad.spec.as_ref().unwrap().containers;
        let errors: Vec<String> = containers.iter().map(|k| container_mounts(&c, k).unwrap_err().to_string()).collect();
        assert!(errors[0].contains("is not a file"), "{}", errors[0]);
        assert!(errors[1].contains("only hostPath and emptyDir"), "{}", errors[1]);
        assert!(errors[2].contains("no volume named \"nope\""), "{}", errors[2]);
        assert!(errors[3].contains("subPath \"../x\""), "{}", errors[3]);
    }

    #[test]
    fn the_hosts_file_names_the_pod_with_its_subdomain() {
        let p = pod(json!({"hostname": "train-0", "subdomain": "train", "containers": [],
                           "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a", "b"]}]}));
        let text = hosts_file(&p, &["10.244.1.5".into()]);
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.244.1.5\ttrain-0.train.ml.svc.cluster.local\ttrain-0\n"), "{text}");
        assert!(text.ends_with("# Entries added by HostAliases.\n10.0.0.1\ta\tb\n"), "{text}");
        let plain = pod(json!({"containers": []}));
        assert!(hosts_file(&plain, &["10.244.1.6".into()]).contains("10.244.1.6\ttrain-0-abcde\n"));
        assert_eq!(sandbox_hostname(&p), "train-0");
        assert_eq!(sandbox_hostname(&plain), "train-0-abcde");
    }

    #[test]
    fn dns_follows_the_pods_dns_policy() {
        let server: IpAddr = "172.18.0.1".parse().unwrap();
        let first = dns_config(&pod(json!({"containers": []})), Some(server)).unwrap();
        assert_eq!(first.servers, ["172.18.0.1"]);
        assert_eq!(first.searches, ["ml.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(first.options, ["ndots:5"]);
        assert!(dns_config(&pod(json!({"dnsPolicy": "Default", "containers": []})), Some(server)).is_none());
        assert!(dns_config(&pod(json!({"hostNetwork": true, "containers": []})), Some(server)).is_none());
        let host_cluster = dns_config(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []})),
            Some(server),
        );
        assert_eq!(host_cluster.unwrap().servers, ["172.18.0.1"]);
        let none = dns_config(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["9.9.9.9"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}, "containers": []})),
            Some(server),
        )
        .unwrap();
        assert_eq!(
            (none.servers, none.options),
            (vec!["9.9.9.9".to_string()], vec!["ndots:2".to_string(), "edns0".into()])
        );
        let merged = dns_config(
            &pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}, "containers": []})),
            Some(server),
        )
        .unwrap();
        assert_eq!(merged.options, ["ndots:1"]);
    }

    #[test]
    fn capabilities_and_privilege_come_from_the_security_context() {
        let c: Container = serde_json::from_value(json!({"name": "c", "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}}))
        .unwrap();
        let (caps, privileged) = security(&c);
        let caps = caps.unwrap();
        assert_eq!(
            (caps.add_capabilities, caps.drop_capabilities, privileged),
            (vec!["IPC_LOCK".to_string()], vec!["ALL".to_string()], false)
        );
        let p = pod(json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"privileged": true}}]}));
        assert!(any_privileged(&p));
    }
}
