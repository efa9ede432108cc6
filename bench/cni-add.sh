#!/usr/bin/env bash
# CNI ADD latency over sequential pods: Skein against the reference `bridge` plugin with
# host-local IPAM (../shared/bench/peer-kernel-bridge.sh), in one run.
#   Skein: node-agent/benches/cni_add.rs, a one-node cluster (API fake, master, the release
#   skein-dp and skein-agent driving it in a node namespace); per pod, ADD start -> first echo reply from the pod's
#   gateway (the issue's measure, flow installation included), and ADD alone.
#   Reference: ADD alone (the bridge plugin's figure; it installs no flows).
# Run as root from the repository root: bench/cni-add.sh
# Environment: BENCH_PODS (pods per side, default 100), SHARED_BENCH (the peers' folder,
# default ../shared/bench).
# The last line is the summary the checks read.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$repo/../shared/bench}
BENCH_PODS=${BENCH_PODS:-100}
[ -f "$SHARED_BENCH/lib.sh" ] || { echo "peer scripts not found in $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
BENCH_PREFIX=${BENCH_PREFIX:-sca$$}
. "$SHARED_BENCH/lib.sh"
need ping python3 ip cargo

# The bench finds skein-cni beside itself in target/release and runs the agent cargo built
# for it (same directory): build both as release first so that neither is a debug build.
echo "building skein-cni, skein-dp, skein-agent and the bench (release)..." >&2
(cd "$repo" && cargo build --release -q -p skein-cni -p skein-agent -p skein-datapath --bin skein-cni --bin skein-agent --bin skein-dp)
(cd "$repo" && cargo bench -q -p skein-agent --bench cni_add --no-run)

echo "measuring the reference bridge plugin ($BENCH_PODS pods)..." >&2
ref_out=$(BENCH_PREFIX="${BENCH_PREFIX}k" BENCH_PODS="$BENCH_PODS" bash "$SHARED_BENCH/peer-kernel-bridge.sh")
printf '%s\n' "$ref_out"
ref=$(tail -1 <<<"$ref_out")

echo "measuring skein ($BENCH_PODS pods)..." >&2
skein=$(cd "$repo" && BENCH_PODS="$BENCH_PODS" cargo bench -q -p skein-agent --bench cni_add)
printf '%s\n' "$skein" | sed '$d'

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
ref_p50=$(field "$ref" cni_add_p50_us); ref_p99=$(field "$ref" cni_add_p99_us)
last=$(tail -1 <<<"$skein")
s_p50=$(field "$last" skein_add_p50_us); s_p99=$(field "$last" skein_add_p99_us)
s_add_p50=$(field "$last" skein_add_only_p50_us); s_add_p99=$(field "$last" skein_add_only_p99_us)
[ -n "$s_p50" ] && [ -n "$ref_p50" ] || { echo "missing figures: skein '$last', reference '$ref'" >&2; exit 1; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print('%.2f' % (a/b) if b else 'n/a')" "$1" "$2"; }

row() { printf '%-38s %10s %10s %13s\n' "$@"; }
echo
row "CNI ADD, $BENCH_PODS sequential pods (us)" skein bridge skein/bridge
row "p50 ADD start -> gateway ping" "$s_p50" - "$(ratio "$s_p50" "$ref_p50")"
row "p99 ADD start -> gateway ping" "$s_p99" - "$(ratio "$s_p99" "$ref_p99")"
row "p50 ADD only" "$s_add_p50" "$ref_p50" "$(ratio "$s_add_p50" "$ref_p50")"
row "p99 ADD only" "$s_add_p99" "$ref_p99" "$(ratio "$s_add_p99" "$ref_p99")"
echo "(the bridge plugin is timed ADD only; the ping rows divide Skein's ADD-to-ping by it)"
echo "skein_add_p50_us=$s_p50 skein_add_p99_us=$s_p99 ref_add_p50_us=$ref_p50"
