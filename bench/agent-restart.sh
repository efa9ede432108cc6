#!/usr/bin/env bash
# Agent restarts and an upgrade under load (issue 21): node-agent/benches/agent_restart.rs,
# a two-node cluster (API fake and master in the bench, release skein-dp and skein-agent in
# each node namespace), 200 pods on node1 and long-lived connections of every kind through
# it (pod<->pod same and other node, ClusterIP, NodePort from outside, egress SNAT; TCP and
# UDP). node1's agent is restarted 10 times (SIGTERM and SIGKILL in turn, the second half
# with the master down), one restart being an upgrade to a rebuilt agent binary.
# Run as root from the repository root: bench/agent-restart.sh
# Environment: BENCH_PODS (default 200), BENCH_RESTARTS (10), BENCH_PER_KIND (connections
# of each kind, 4).
# The last line is the summary: stall_ms_p50 stall_ms_max connections_lost packets_lost.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}

# The upgrade: the agent rebuilt with another build id (its log says which runs), kept
# aside; then the baseline build, which the bench starts from.
build_id="upgrade-$(date +%s)"
echo "building the upgrade agent (build=$build_id, release)..." >&2
SKEIN_BUILD_ID=$build_id cargo build --release -q -p skein-agent --bin skein-agent
upgrade_dir=$(mktemp -d)
trap 'rm -rf "$upgrade_dir"' EXIT
cp "$target/release/skein-agent" "$upgrade_dir/skein-agent"
echo "building skein-cni, skein-dp, skein-agent and the bench (release)..." >&2
cargo build --release -q -p skein-cni -p skein-agent -p skein-datapath --bin skein-cni --bin skein-agent --bin skein-dp
cargo bench -q -p skein-agent --bench agent_restart --no-run
cmp -s "$target/release/skein-agent" "$upgrade_dir/skein-agent" && { echo "the upgrade binary is the same file as the baseline" >&2; exit 1; }

BENCH_UPGRADE_AGENT="$upgrade_dir/skein-agent" BENCH_UPGRADE_BUILD="$build_id" \
    cargo bench -q -p skein-agent --bench agent_restart
