//! The rendered install artefacts as data: every object of one render (the default one is
//! `manifests/`, the others `tests/rendered/*.yaml`), typed access to the objects the tests
//! look at, and the containers' flags.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One object and the file it came from.
#[derive(Debug, Clone)]
pub struct Object {
    pub file: PathBuf,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.value["metadata"]["labels"][key].as_str()
    }

    /// The object as its Kubernetes type; panics naming the object if it does not fit.
    pub fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{} {} in {}: {e}", self.kind(), self.name(), self.file.display()))
    }
}

/// The objects of one rendering of the chart.
#[derive(Debug, Clone)]
pub struct Render {
    /// `default` (manifests/) or the name of the values file in tests/values/.
    pub name: String,
    pub objects: Vec<Object>,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("install/ has a parent").to_path_buf()
}

/// Every document of a YAML file (empty documents skipped).
pub fn load_file(path: &Path) -> Vec<Object> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|value| {
            assert!(value.is_object(), "{}: a document that is not an object: {value}", path.display());
            Object { file: path.to_path_buf(), value }
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `manifests/` (the default values) and every `tests/rendered/*.yaml`.
pub fn renders() -> Vec<Render> {
    let root = repo_root();
    let mut renders = vec![Render {
        name: "default".into(),
        objects: yaml_files(&root.join("manifests")).iter().flat_map(|f| load_file(f)).collect(),
    }];
    for file in yaml_files(&root.join("install/tests/rendered")) {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        renders.push(Render { name, objects: load_file(&file) });
    }
    assert!(renders.len() >= 3, "expected manifests/ and tests/rendered/{{custom,minimal}}.yaml");
    renders
}

impl Render {
    pub fn of_kind(&self, kind: &str) -> Vec<&Object> {
        self.objects.iter().filter(|o| o.kind() == kind).collect()
    }

    /// The one object of `kind` for `component` (app.kubernetes.io/component).
    pub fn component<T: DeserializeOwned>(&self, kind: &str, component: &str) -> T {
        let found: Vec<&Object> = self
            .of_kind(kind)
            .into_iter()
            .filter(|o| o.label("app.kubernetes.io/component") == Some(component))
            .collect();
        assert_eq!(found.len(), 1, "render {}: expected one {kind} of component {component}", self.name);
        found[0].typed()
    }

    pub fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&Object> {
        self.objects.iter().find(|o| o.kind() == kind && o.name() == name && o.namespace() == namespace)
    }

    pub fn get<T: DeserializeOwned>(&self, kind: &str, namespace: Option<&str>, name: &str) -> T {
        self.find(kind, namespace, name)
            .unwrap_or_else(|| panic!("render {}: no {kind} {namespace:?}/{name}", self.name))
            .typed()
    }

    /// The namespace every namespaced object is in.
    pub fn namespace(&self) -> String {
        let namespaces: std::collections::BTreeSet<&str> = self.objects.iter().filter_map(|o| o.namespace()).collect();
        assert_eq!(namespaces.len(), 1, "render {}: objects in several namespaces: {namespaces:?}", self.name);
        namespaces.into_iter().next().unwrap_or_default().to_owned()
    }

    /// Every (workload name, pod spec) of Deployments and DaemonSets.
    pub fn pod_specs(&self) -> Vec<(String, PodSpec)> {
        let mut out = Vec::new();
        for o in &self.objects {
            let spec = &o.value["spec"]["template"]["spec"];
            if matches!(o.kind(), "Deployment" | "DaemonSet" | "Job" | "StatefulSet") {
                let spec: PodSpec = serde_json::from_value(spec.clone())
                    .unwrap_or_else(|e| panic!("render {}: {} {}: pod spec: {e}", self.name, o.kind(), o.name()));
                out.push((format!("{} {}", o.kind(), o.name()), spec));
            }
        }
        out
    }
}

/// Containers and init containers of a pod spec.
pub fn all_containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect()
}

pub fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    all_containers(spec).into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's `--flag[=value]` arguments, in order; a value given as the next argument
/// is taken too. The first argument, when it is not a flag, is the subcommand.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub subcommand: Option<String>,
    pub flags: Vec<(String, Option<String>)>,
}

impl Flags {
    pub fn of(container: &Container) -> Flags {
        let args = container.args.clone().unwrap_or_default();
        let mut out = Flags::default();
        let mut rest = args.as_slice();
        if let Some(first) = rest.first()
            && !first.starts_with('-')
        {
            out.subcommand = Some(first.clone());
            rest = &rest[1..];
        }
        let mut i = 0;
        while i < rest.len() {
            let arg = &rest[i];
            assert!(arg.starts_with("--"), "container {}: argument {arg:?} is not a --flag", container.name);
            match arg.split_once('=') {
                Some((flag, value)) => out.flags.push((flag.to_owned(), Some(value.to_owned()))),
                None if rest.get(i + 1).is_some_and(|next| !next.starts_with("--")) => {
                    out.flags.push((arg.clone(), Some(rest[i + 1].clone())));
                    i += 1;
                }
                None => out.flags.push((arg.clone(), None)),
            }
            i += 1;
        }
        out
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == flag)
    }

    /// The value of `flag` (which must be given once, with a value).
    pub fn value(&self, flag: &str) -> Option<&str> {
        let values: Vec<&Option<String>> = self.flags.iter().filter(|(f, _)| f == flag).map(|(_, v)| v).collect();
        assert!(values.len() <= 1, "{flag} given {} times", values.len());
        values.first().map(|v| v.as_deref().unwrap_or_else(|| panic!("{flag} without a value")))
    }
}

/// The container's environment by name.
pub fn env(container: &Container) -> BTreeMap<String, EnvVar> {
    container.env.iter().flatten().map(|e| (e.name.clone(), e.clone())).collect()
}

/// The `$(NAME)` references in `text` (Kubernetes expands them from the container's env).
pub fn var_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// The port of a `HOST:PORT` listen address.
pub fn listen_port(address: &str) -> i32 {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{address:?} is not HOST:PORT"))
}
