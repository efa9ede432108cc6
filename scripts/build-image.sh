#!/usr/bin/env bash
# Builds Skein's container image from Containerfile on a machine with no registry, into an
# OCI archive tagged with the workspace version:
#
#   scripts/build-image.sh                 # → $OUT/skein-<version>.oci.tar
#
# 1. The Debian base (BASE_IMAGE) is made from Debian's packages: mmdebstrap bookworm
#    (minbase, iptables), imported into podman as localhost/skein-base:bookworm (cached: made
#    again only when the package list changes).
# 2. The `build` stage's command runs on the host: cargo build --release --locked of
#    skein-master, skein-agent, skein-dp and skein-cni (stripped), handed to podman as that stage
#    (--build-context build=DIR), since no Rust image can be pulled here.
# 3. podman build of the Containerfile's runtime stage, tagged with the chart's image name and
#    the workspace version; podman save --format oci-archive.
#
# Environment: OUT (default $CARGO_TARGET_DIR/image or target/image), SKEIN_IMAGE (default the
# chart's `image.repository`), SKEIN_IMAGE_PROFILE (release; `dev` reuses a debug build, as CI
# does after its tests: same image, unoptimised binaries), CARGO_TARGET_DIR.
# Needs root, mmdebstrap and podman (it installs them with apt-get when missing).
# Last line: image=<name:tag> archive=<path> bytes=<n>
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${OUT:-$target_dir/image}"
profile="${SKEIN_IMAGE_PROFILE:-release}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
repository="${SKEIN_IMAGE:-$(sed -n 's/^  repository: //p' charts/skein/values.yaml | head -n 1)}"
image="$repository:$version"
base="localhost/skein-base:bookworm"
base_packages="iptables"

say() { printf 'build-image: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "needs root (podman's storage and mmdebstrap's chroot)"
    exit 1
fi
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v podman >/dev/null || missing+=(podman)
command -v strip >/dev/null || missing+=(binutils)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
case "$profile" in
    release) cargo_profile=(--release); bin_dir="$target_dir/release" ;;
    dev) cargo_profile=(); bin_dir="$target_dir/debug" ;;
    *) say "SKEIN_IMAGE_PROFILE=$profile: must be release or dev"; exit 1 ;;
esac
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. The Debian base, from Debian's packages.
stamp="$out/.base-stamp"
if ! podman image exists "$base" || [ "$(cat "$stamp" 2>/dev/null)" != "bookworm minbase $base_packages" ]; then
    say "making $base with mmdebstrap (bookworm, minbase, $base_packages)"
    mmdebstrap --quiet --variant=minbase --include="$base_packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        bookworm "$work/rootfs.tar"
    podman import --quiet "$work/rootfs.tar" "$base" >/dev/null
    rm -f "$work/rootfs.tar"
    echo "bookworm minbase $base_packages" >"$stamp"
fi

# 2. The build stage's command, on the host.
say "cargo build ${cargo_profile[*]:-} --locked -p skein-master -p skein-agent -p skein-cni -p skein-datapath"
cargo build "${cargo_profile[@]}" --locked -p skein-master -p skein-agent -p skein-cni -p skein-datapath
mkdir -p "$work/build/out"
for binary in skein-master skein-agent skein-dp skein-cni; do
    cp "$bin_dir/$binary" "$work/build/out/$binary"
done
strip "$work"/build/out/*

# 3. The runtime stage, and the archive.
say "podman build $image"
podman build --quiet --layers=false \
    --build-arg BASE_IMAGE="$base" --build-arg VERSION="$version" \
    --build-context build="$work/build" \
    --tag "$image" -f Containerfile "$work/build" >/dev/null
archive="$out/skein-$version.oci.tar"
rm -f "$archive"
podman save --quiet --format oci-archive -o "$archive" "$image"
echo "image=$image archive=$archive bytes=$(stat -c %s "$archive")"
