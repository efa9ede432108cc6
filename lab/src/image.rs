//! The lab's container image, built without a registry: one uncompressed layer holding
//! BusyBox and the C libraries the lab's own binaries link against (`skein-lab`, and the
//! workspace binaries the lab mounts into the Skein images it assembles), written as an OCI image
//! archive (`oci-layout`, `index.json`, `blobs/sha256/…`) that `ctr images import` loads
//! into each node's containerd. The image is the pod sandbox ("pause") image — its command
//! sleeps forever — and the base of every workload container, whose command is the lab's
//! echo server, mounted read-only from the host (a debug build of it is ~250 MB; copying it
//! into an image for every lab would cost more than the whole rest of `up`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::sys;

/// The image's name in every node's containerd (the CRI plugin's `sandbox_image`).
pub const IMAGE_REF: &str = "localhost/skein-lab/node:1";
/// Where the workload binary is mounted inside containers.
pub const WORKLOAD_PATH: &str = "/skein-lab";
/// The sandbox's command: sleep as long as a 32-bit signed number of seconds allows (68
/// years); the runtime kills it when the sandbox stops.
pub const PAUSE_COMMAND: [&str; 3] = ["/bin/busybox", "sleep", "2147483647"];

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file the image needs is missing or unreadable.
    #[error("reading {path} for the lab's image: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The archive could not be written.
    #[error("writing the lab's image {path}: {source}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ldd` could not tell the binary's libraries.
    #[error("finding the libraries of {binary}: {reason}")]
    Libraries {
        /// The binary.
        binary: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The shared libraries (absolute paths, as the dynamic loader finds them) and the loader
/// that `binary` needs, from `ldd` output. Empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let output = sys::output("ldd", [binary])
        .map_err(|e| ImageError::Libraries { binary: binary.to_path_buf(), reason: e.to_string() })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // ldd exits 1 for "not a dynamic executable": nothing to copy.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(ImageError::Libraries { binary: binary.to_path_buf(), reason: stderr.trim().to_string() });
    }
    parse_ldd(&text).map_err(|reason| ImageError::Libraries { binary: binary.to_path_buf(), reason })
}

/// Parses `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("a library is missing: {line}"));
        }
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

/// What goes into the image: BusyBox at `/bin/busybox` and the libraries the given binaries
/// need, at the paths the loader looks for them.
#[derive(Debug, Clone)]
pub struct ImageContents {
    /// The BusyBox binary (static or not: its libraries are added like the others').
    pub busybox: PathBuf,
    /// Binaries that will run in the image from a mount: their libraries are included.
    pub binaries: Vec<PathBuf>,
}

/// A built image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The OCI archive.
    pub archive: PathBuf,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Read { path: path.to_path_buf(), source })
}

/// Appends a file, directory or symlink entry with fixed metadata (root-owned, time 0), so
/// the same contents give the same layer digest.
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    match link {
        Some(target) => builder.append_link(&mut header, path, target),
        None => builder.append_data(&mut header, path, data),
    }
}

/// The layer: a tar of the image's files.
fn layer(contents: &ImageContents) -> Result<Vec<u8>, ImageError> {
    let mut libraries = BTreeSet::new();
    for binary in std::iter::once(&contents.busybox).chain(&contents.binaries) {
        libraries.extend(shared_libraries(binary)?);
    }
    let io = |source| ImageError::Write { path: PathBuf::from("<layer>"), source };
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::from(["bin".to_string(), "tmp".to_string(), "etc".to_string()]);
    for library in &libraries {
        let mut dir = library.parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("/")) {
            dirs.insert(d.to_string_lossy().trim_start_matches('/').to_string());
            dir = d.parent();
        }
    }
    for dir in &dirs {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        append(&mut builder, dir, tar::EntryType::Directory, mode, &[], None).map_err(io)?;
    }
    append(&mut builder, "bin/busybox", tar::EntryType::Regular, 0o755, &read(&contents.busybox)?, None).map_err(io)?;
    append(&mut builder, "bin/sh", tar::EntryType::Symlink, 0o777, &[], Some("busybox")).map_err(io)?;
    append(&mut builder, "etc/passwd", tar::EntryType::Regular, 0o644, b"root:x:0:0:root:/:/bin/sh\n", None)
        .map_err(io)?;
    append(&mut builder, "etc/group", tar::EntryType::Regular, 0o644, b"root:x:0:\n", None).map_err(io)?;
    for library in &libraries {
        // The loader opens the path ldd printed; the file behind a symlink is what counts.
        let real =
            std::fs::canonicalize(library).map_err(|source| ImageError::Read { path: library.clone(), source })?;
        let name = library.to_string_lossy().trim_start_matches('/').to_string();
        append(&mut builder, &name, tar::EntryType::Regular, 0o755, &read(&real)?, None).map_err(io)?;
    }
    builder.into_inner().map_err(io)
}

/// Builds the image archive at `archive` (replacing it) and returns its manifest digest.
pub fn build(contents: &ImageContents, archive: &Path) -> Result<BuiltImage, ImageError> {
    let layer = layer(contents)?;
    let layer_digest = sha256_hex(&layer);
    let config = json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "config": {"Cmd": PAUSE_COMMAND, "Env": [format!("PATH={}", crate::podspec::DEFAULT_PATH)], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created_by": "skein-lab: busybox and the C libraries of the lab's binaries"}],
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256_hex(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256_hex(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": IMAGE_REF,
                                       "io.containerd.image.name": IMAGE_REF}}],
    })
    .to_string()
    .into_bytes();
    let write_error = |source| ImageError::Write { path: archive.to_path_buf(), source };
    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("oci-layout".to_string(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json".to_string(), index),
        (format!("blobs/sha256/{layer_digest}"), layer),
        (format!("blobs/sha256/{config_digest}"), config),
        (format!("blobs/sha256/{manifest_digest}"), manifest),
    ] {
        append(&mut out, &name, tar::EntryType::Regular, 0o644, &data, None).map_err(write_error)?;
    }
    let bytes = out.into_inner().map_err(write_error)?;
    let temporary = archive.with_extension("tmp");
    std::fs::File::create(&temporary)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&temporary, archive))
        .map_err(write_error)?;
    Ok(BuiltImage { archive: archive.to_path_buf(), manifest_digest: format!("sha256:{manifest_digest}") })
}

/// The OCI name of this machine's architecture.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let missing = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match_and_whose_layer_holds_busybox() {
        let dir = tempfile::tempdir().unwrap();
        // Any executable stands in for BusyBox: the test checks the archive, not BusyBox.
        let busybox = PathBuf::from("/bin/sh");
        let contents = ImageContents { busybox: busybox.clone(), binaries: vec![] };
        let archive = dir.path().join("image.tar");
        let built = build(&contents, &archive).unwrap();
        let again = build(&contents, &dir.path().join("again.tar")).unwrap();
        assert_eq!(built.manifest_digest, again.manifest_digest, "the same contents give the same image");

        let mut files = std::collections::BTreeMap::new();
        let mut reader = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            files.insert(name, data);
        }
        for (name, data) in &files {
            if let Some(digest) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(data), digest, "{name}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], IMAGE_REF);
        let manifest_name = format!("blobs/sha256/{}", built.manifest_digest.trim_start_matches("sha256:"));
        let manifest: serde_json::Value = serde_json::from_slice(&files[&manifest_name]).unwrap();
        let layer_name =
            format!("blobs/sha256/{}", manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let mut layer = tar::Archive::new(&files[&layer_name][..]);
        let names: Vec<String> =
            layer.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string()).collect();
        assert!(names.contains(&"bin/busybox".to_string()), "{names:?}");
        assert!(names.iter().any(|n| n.contains("libc.so")), "the shell's libc is in the layer: {names:?}");
        let config_name =
            format!("blobs/sha256/{}", manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let config: serde_json::Value = serde_json::from_slice(&files[&config_name]).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(PAUSE_COMMAND));
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
    }

    #[test]
    fn a_missing_busybox_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let contents = ImageContents { busybox: PathBuf::from("/nonexistent/busybox"), binaries: vec![] };
        let error = build(&contents, &dir.path().join("x.tar")).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/busybox"), "{error}");
    }
}
