//! The manifests against the real binaries: every `--flag` a container passes is one its
//! binary (or subcommand) lists in `--help`, and `skein-agent install-cni` writes the
//! conflist the ConfigMap shows.
//!
//! The binaries are taken from beside this test's executable (`target/<profile>/`), where
//! `cargo test --workspace` builds them before any test runs. With `cargo test -p
//! skein-install-tests` alone, build them first: `cargo build -p skein-master -p skein-agent
//! -p skein-cni -p skein-datapath`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Flags, all_containers, renders};

/// `target/<profile>/`: this test runs as `target/<profile>/deps/<test>-<hash>`.
fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("deps/");
    deps.parent().expect("target/<profile>/").to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: `cargo test --workspace` builds it; alone, run `cargo build -p skein-master -p skein-agent -p skein-cni -p skein-datapath` first",
        path.display()
    );
    path
}

/// Every `--flag` named in a help text.
fn help_flags(binary: &Path, subcommand: Option<&str>) -> BTreeSet<String> {
    let mut command = Command::new(binary);
    command.args(subcommand).arg("--help");
    let out = command.output().unwrap_or_else(|e| panic!("running {} --help: {e}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{} {}--help` failed (is `{}` a subcommand?):\n{text}",
        binary.display(),
        subcommand.map(|s| format!("{s} ")).unwrap_or_default(),
        subcommand.unwrap_or_default()
    );
    // clap lists each option on a line of its own: `  -h, --help`, `      --name <NAME>`.
    // Only those lines count, not flags mentioned in descriptions.
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = match line.as_bytes() {
            [b'-', short, b',', b' ', ..] if short.is_ascii_alphanumeric() => &line[4..],
            _ => line,
        };
        if let Some(rest) = line.strip_prefix("--") {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
            if !name.is_empty() {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

#[test]
fn every_flag_in_the_manifests_is_one_its_binary_accepts() {
    // (binary, subcommand) → flags the manifests pass, with where.
    let mut wanted: BTreeMap<(String, Option<String>), BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for render in renders() {
        for (workload, spec) in render.pod_specs() {
            for c in all_containers(&spec) {
                let command = c.command.clone().unwrap_or_default();
                let [binary] = command.as_slice() else {
                    panic!(
                        "render {}: {workload}/{}: command must be the binary alone: {command:?}",
                        render.name, c.name
                    )
                };
                let flags = Flags::of(c);
                for (flag, _) in &flags.flags {
                    wanted
                        .entry((binary.clone(), flags.subcommand.clone()))
                        .or_default()
                        .entry(flag.clone())
                        .or_default()
                        .insert(format!("{}:{workload}/{}", render.name, c.name));
                }
            }
        }
    }
    let binaries: BTreeSet<&str> = wanted.keys().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        binaries,
        BTreeSet::from(["skein-agent", "skein-dp", "skein-master"]),
        "the manifests run these binaries"
    );
    let mut missing = Vec::new();
    for ((name, subcommand), flags) in &wanted {
        let known = help_flags(&binary(name), subcommand.as_deref());
        for (flag, users) in flags {
            if !known.contains(flag) {
                let command = subcommand.as_ref().map_or(name.clone(), |s| format!("{name} {s}"));
                missing.push(format!(
                    "{command}: {flag} (used by {})",
                    users.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(missing.is_empty(), "flags the binaries do not accept:\n  {}", missing.join("\n  "));
}

#[test]
fn install_cni_writes_the_plugin_and_the_conflist_the_config_map_shows() {
    let agent = binary("skein-agent");
    let plugin = binary("skein-cni");
    for render in renders() {
        let who = format!("render {}", render.name);
        let ds: k8s_openapi::api::apps::v1::DaemonSet = render.component("DaemonSet", "agent");
        let spec = ds.spec.and_then(|s| s.template.spec).expect("pod spec");
        let init = common::container(&spec, "install-cni");
        let socket = Flags::of(init).value("--cni-socket").expect("--cni-socket").to_owned();
        let dir = tempfile::tempdir().expect("temp dir");
        let (bin_dir, conf_dir) = (dir.path().join("bin"), dir.path().join("net.d"));
        // The init container's arguments, with the host directories moved into the temp dir.
        let out = Command::new(&agent)
            .arg("install-cni")
            .arg(format!("--cni-bin-dir={}", bin_dir.display()))
            .arg(format!("--cni-conf-dir={}", conf_dir.display()))
            .arg(format!("--cni-plugin={}", plugin.display()))
            .arg(format!("--cni-socket={socket}"))
            .output()
            .expect("running skein-agent install-cni");
        assert!(
            out.status.success(),
            "{who}: skein-agent install-cni failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let copied = std::fs::read(bin_dir.join("skein-cni")).expect("skein-cni in the bin dir");
        assert_eq!(copied, std::fs::read(&plugin).expect("the plugin"), "{who}: the plugin copied whole");
        let written = std::fs::read_to_string(conf_dir.join("10-skein.conflist")).expect("the conflist");
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            render.get("ConfigMap", Some(&render.namespace()), &format!("{}-config", ds_prefix(&render)));
        let shown = cm.data.unwrap_or_default().get("10-skein.conflist").cloned().expect("the ConfigMap's conflist");
        let written: serde_json::Value = serde_json::from_str(&written).expect("written conflist is JSON");
        let shown: serde_json::Value = serde_json::from_str(&shown).expect("shown conflist is JSON");
        assert_eq!(written, shown, "{who}: the ConfigMap must show what install-cni writes");
    }
}

/// The chart's base name (`skein` for the release `skein`): the agent's name less `-agent`.
fn ds_prefix(render: &common::Render) -> String {
    let ds = render.of_kind("DaemonSet");
    ds.iter().find_map(|d| d.name().strip_suffix("-agent").map(str::to_owned)).expect("a DaemonSet <base>-agent")
}
