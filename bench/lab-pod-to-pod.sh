#!/usr/bin/env bash
# Pod to pod through Skein's whole pipeline — logical switch and router, conntrack, ACLs of
# NetworkPolicies, load balancers of Services, Geneve between nodes — against the peers, in one
# run measured by the same code:
#   Skein: a 2-node lab (release build; the real skein-master, skein-dp, skein-agent and
#     skein-cni; pods run by containerd), three pods — a client and a server on node1, a server
#     on node2 — with default-deny NetworkPolicies and allow rules for the client, and Services
#     in front of the servers, as a real namespace has them.
#   Peers (../shared/bench, run unchanged): the kernel bridge (same node), a kernel VXLAN overlay
#     (cross node), Open vSwitch's userspace datapath (same node).
# For each: iperf3 TCP Gbit/s with 1 and 4 streams, TCP retransmits per GB, ping RTT p50/p99,
# TCP request/response p50/p99 (bench/lib/tcp_rr.py); for Skein also the switch's CPU
# seconds per GB (both nodes' skein-dp), its idle CPU and the frames its ports dropped.
# Run as root from the repository root: bench/lab-pod-to-pod.sh
# Environment: BENCH_SECONDS (per iperf3 run, default 5), BENCH_RR_COUNT (request/response round
# trips, default 5000), SHARED_BENCH (the peers' folder, default ../shared/bench),
# BENCH_IDLE_SECONDS (idle CPU window, default 10), BENCH_KEEP_LAB=1 (leave the lab and its
# pods running afterwards, e.g. to profile; remove it with `skein-lab --prefix skbench down`).
# Needs the Debian packages iperf3, iputils-ping, openvswitch-switch, containerd, runc and
# containernetworking-plugins (scripts/test.sh installs them).
# Needs no running lab (it builds its own, prefix skbench, and removes it). The last line is
# the summary the checks read (name=value).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$repo/../shared/bench}
[ -f "$SHARED_BENCH/lib.sh" ] || { echo "peer scripts not found in $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, the lab)" >&2; exit 2; }
BENCH_PREFIX=${BENCH_PREFIX:-skl$$}
work=$(mktemp -d)
# The peers' folder, with its helpers extended by bench/lib/measure.sh.
mkdir "$work/peers"; cp -r "$SHARED_BENCH"/. "$work/peers/"
echo ". '$repo/bench/lib/measure.sh'" >>"$work/peers/lib.sh"
export BENCH_LIB=$repo/bench/lib BENCH_SECONDS=${BENCH_SECONDS:-5} BENCH_RR_COUNT=${BENCH_RR_COUNT:-5000}
. "$work/peers/lib.sh"
need iperf3 ping python3 ip cargo containerd runc

PREFIX=skbench
NS=skein-bench
if [ -n "$(ls -A /run/skein-lab 2>/dev/null)" ]; then
  echo "a lab is running ($(ls /run/skein-lab)); stop it first (skein-lab --prefix P down): labs share 172.18.0.0/24" >&2
  exit 2
fi

echo "building the lab and Skein's binaries (release)..." >&2
(cd "$repo" && cargo build --release -q -p skein-lab -p skein-master -p skein-agent -p skein-cni -p skein-datapath)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$target/release
LAB=("$BIN/skein-lab" --prefix "$PREFIX")
lab_up=0
cleanup() {
  if [ "$lab_up" = 1 ] && [ "${BENCH_KEEP_LAB:-0}" != 1 ]; then "${LAB[@]}" down >/dev/null 2>&1 || true; fi
  cleanup_ns
  rm -rf "$work"
}
trap cleanup EXIT

# val FILE KEY: the last value recorded for KEY
val() { sed -n "s/^$2=//p" "$1" | tail -1; }
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# a ÷ b, two decimals ("n/a" when b is 0 or missing): ratios and per-GB figures.
ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print('%.2f' % (a/b) if b else 'n/a')" "$1" "$2"; }

# --- Peers ------------------------------------------------------------------------------------
peer() { # NAME SCRIPT: runs a peer script, its records into $work/NAME.rec; prints its summary
  echo "measuring $1..." >&2
  BENCH_RECORD="$work/$1.rec" BENCH_PREFIX="${BENCH_PREFIX}$1" bash "$work/peers/$2" | tail -1
}
kb=$(peer kb peer-kernel-bridge.sh)
vx=$(peer vx peer-kernel-vxlan.sh)
ovs=$(peer ovs peer-ovs-userspace.sh)
echo "  $kb" >&2; echo "  $vx" >&2; echo "  $ovs" >&2

# --- Skein: the lab ---------------------------------------------------------------------------
echo "starting a 2-node lab..." >&2
lab_up=1
"${LAB[@]}" up --nodes 2 --bin-dir "$BIN" >&2
pod() { # NAME NODE ROLE
  printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {role: %s}}\nspec:\n  nodeSelector: {kubernetes.io/hostname: %s}\n  containers:\n  - {name: main, image: skein-lab/echo, ports: [{name: http, containerPort: 8080}]}\n' "$1" "$NS" "$3" "$2"
}
{
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$NS"
  pod client node1 client; pod server-same node1 server; pod server-cross node2 server
  # Isolation as a real namespace has it: ingress and egress denied by default; the client may
  # reach the servers (every port and protocol) and DNS; the servers accept the client only.
  printf -- '---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: %s}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n' "$NS"
  printf -- '---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: servers-from-client, namespace: %s}\nspec:\n  podSelector: {matchLabels: {role: server}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]\n' "$NS"
  printf -- '---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-to-servers, namespace: %s}\nspec:\n  podSelector: {matchLabels: {role: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {role: server}}}]\n  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]\n' "$NS"
  # Services in front of the servers (load balancers on every node's pipeline).
  for i in $(seq 1 20); do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: server-%s, namespace: %s}\nspec:\n  selector: {role: server}\n  ports: [{name: http, port: %s, targetPort: 8080}]\n' "$i" "$NS" "$((8000 + i))"
  done
} >"$work/bench.yaml"
"${LAB[@]}" apply -f "$work/bench.yaml" >&2

# Wait for the three pods; read each one's sandbox (network namespace) and address.
declare -A netns ip
for _ in $(seq 1 120); do
  wide=$("${LAB[@]}" get pods -n "$NS" -o wide 2>/dev/null || true)
  ready=$(awk 'NR==1 {for (i=1;i<=NF;i++) h[$i]=i; next} $h["STATUS"]=="Running" && $h["IP"] ~ /^[0-9.]+$/' <<<"$wide" | wc -l)
  [ "$ready" = 3 ] && break
  sleep 0.5
done
[ "${ready:-0}" = 3 ] || { echo "the bench pods did not start:" >&2; echo "$wide" >&2; exit 1; }
while read -r name addr sandbox; do netns[$name]=$sandbox; ip[$name]=$addr; done < <(
  awk 'NR==1 {for (i=1;i<=NF;i++) h[$i]=i; next} {print $h["NAME"], $h["IP"], $h["SANDBOX"]}' <<<"$wide")
for p in client server-same server-cross; do
  [ -e "/run/netns/${netns[$p]}" ] || { echo "pod $p: no network namespace ${netns[$p]}:" >&2; echo "$wide" >&2; exit 1; }
done
for p in server-same server-cross; do
  ip netns exec "${netns[client]}" ping -c 3 -W 1 -q "${ip[$p]}" >/dev/null ||
    { echo "client cannot reach $p (${ip[$p]}) through the lab" >&2; exit 1; }
done

dp_pid() { pgrep -f "skein-dp .*/run/skein-lab/$PREFIX/$1/" | head -1; }
agent_pid() { pgrep -f "skein-agent .*/run/skein-lab/$PREFIX/$1/" | head -1; }
dps="$(dp_pid node1) $(dp_pid node2)"
[ "$(wc -w <<<"$dps")" = 2 ] || { echo "cannot find both nodes' skein-dp processes" >&2; exit 1; }
# drops: frames the switch's ports dropped (receive incl. ring full, send) and outputs to
# unknown ports, both nodes
drops() {
  local n total=0
  for n in node1 node2; do
    total=$((total + $("$BIN/skein-dp" stats --control "/run/skein-lab/$PREFIX/$n/dp.sock" | tr ' ' '\n' |
      awk -F= '$1 ~ /^port_[0-9]+_(rx|tx)_dropped$/ || $1 == "output_unknown_port_drops" {s += $2} END {print s + 0}')))
  done
  echo "$total"
}

echo "measuring Skein idle CPU..." >&2
idle=${BENCH_IDLE_SECONDS:-10}
idle_pct=0
for n in node1 node2; do
  BENCH_CPU_PIDS="$(dp_pid $n) $(agent_pid $n)"
  t0=$(pids_ticks); sleep "$idle"; t1=$(pids_ticks)
  pct=$(python3 -c "import os; print('%.2f' % (($t1-$t0)/os.sysconf('SC_CLK_TCK')/$idle*100))")
  echo "  $n: skein-dp + skein-agent idle: $pct % of a core" >&2
  idle_pct=$(python3 -c "print(max($idle_pct, $pct))")
done

drops0=$(drops)
export BENCH_CPU_PIDS=$dps
echo "measuring Skein, same node..." >&2
BENCH_RECORD=$work/same.rec tcp_gbps "${netns[client]}" "${netns[server-same]}" "${ip[server-same]}" >/dev/null
BENCH_RECORD=$work/same.rec rtt_us "${netns[client]}" "${ip[server-same]}" >/dev/null
echo "measuring Skein, cross node..." >&2
BENCH_RECORD=$work/cross.rec tcp_gbps "${netns[client]}" "${netns[server-cross]}" "${ip[server-cross]}" >/dev/null
BENCH_RECORD=$work/cross.rec rtt_us "${netns[client]}" "${ip[server-cross]}" >/dev/null
drops1=$(drops)

# --- The table and the summary ----------------------------------------------------------------
s=$work/same.rec; c=$work/cross.rec; k=$work/kb.rec; v=$work/vx.rec; o=$work/ovs.rec
retr=$(( $(val "$s" retransmits) + $(val "$c" retransmits) ))
gb=$(python3 -c "print($(val "$s" gigabytes) + $(val "$c" gigabytes))")
cpu=$(python3 -c "print($(val "$s" cpu_s) + $(val "$c" cpu_s))")
row() { printf '%-36s %12s %12s %12s %12s %8s\n' "$@"; }
echo
row "measure" "skein-same" "kernel-br" "ovs-user" "skein-cross" "vxlan"
row "TCP 1 stream (Gbit/s)" "$(val "$s" tcp1_gbps)" "$(val "$k" tcp1_gbps)" "$(val "$o" tcp1_gbps)" "$(val "$c" tcp1_gbps)" "$(val "$v" tcp1_gbps)"
row "TCP 4 streams (Gbit/s)" "$(val "$s" tcp4_gbps)" "$(val "$k" tcp4_gbps)" "$(val "$o" tcp4_gbps)" "$(val "$c" tcp4_gbps)" "$(val "$v" tcp4_gbps)"
for f in "$s" "$k" "$o" "$c" "$v"; do rpg+=("$(ratio "$(val "$f" retransmits)" "$(val "$f" gigabytes)")"); done
row "TCP retransmits per GB" "${rpg[@]}"
row "ping RTT p50 (us)" "$(val "$s" ping_p50_us)" "$(val "$k" ping_p50_us)" "$(val "$o" ping_p50_us)" "$(val "$c" ping_p50_us)" "$(val "$v" ping_p50_us)"
row "ping RTT p99 (us)" "$(val "$s" ping_p99_us)" "$(val "$k" ping_p99_us)" "$(val "$o" ping_p99_us)" "$(val "$c" ping_p99_us)" "$(val "$v" ping_p99_us)"
row "TCP request/response p50 (us)" "$(val "$s" rr_p50_us)" "$(val "$k" rr_p50_us)" "$(val "$o" rr_p50_us)" "$(val "$c" rr_p50_us)" "$(val "$v" rr_p50_us)"
row "TCP request/response p99 (us)" "$(val "$s" rr_p99_us)" "$(val "$k" rr_p99_us)" "$(val "$o" rr_p99_us)" "$(val "$c" rr_p99_us)" "$(val "$v" rr_p99_us)"
row "switch CPU s per GB (skein-dp)" "$(ratio "$(val "$s" cpu_s)" "$(val "$s" gigabytes)")" "-" "-" "$(ratio "$(val "$c" cpu_s)" "$(val "$c" gigabytes)")" "-"
echo "Skein idle CPU (skein-dp + skein-agent, busiest node): $idle_pct % of a core; frames dropped by the switch during the runs: $((drops1 - drops0))"
echo "summary: cross_node_tcp_gbps=$(val "$c" tcp1_gbps) vxlan_tcp_gbps=$(val "$v" tcp1_gbps)" \
  "cross_node_tcp_ratio=$(ratio "$(val "$c" tcp1_gbps)" "$(val "$v" tcp1_gbps)")" \
  "cross_node_tcp4_gbps=$(val "$c" tcp4_gbps) vxlan_tcp4_gbps=$(val "$v" tcp4_gbps)" \
  "same_node_tcp_gbps=$(val "$s" tcp1_gbps) bridge_tcp_gbps=$(val "$k" tcp1_gbps) ovs_tcp_gbps=$(val "$o" tcp1_gbps)" \
  "same_node_tcp_ratio=$(ratio "$(val "$s" tcp1_gbps)" "$(val "$k" tcp1_gbps)")" \
  "same_node_rtt_p50_us=$(val "$s" ping_p50_us) same_node_rtt_p99_us=$(val "$s" ping_p99_us) bridge_rtt_p50_us=$(val "$k" ping_p50_us)" \
  "same_node_rtt_ratio=$(ratio "$(val "$s" ping_p50_us)" "$(val "$k" ping_p50_us)")" \
  "cross_node_rtt_p50_us=$(val "$c" ping_p50_us) cross_node_rtt_p99_us=$(val "$c" ping_p99_us) vxlan_rtt_p50_us=$(val "$v" ping_p50_us)" \
  "cross_node_rtt_ratio=$(ratio "$(val "$c" ping_p50_us)" "$(val "$v" ping_p50_us)")" \
  "same_node_rr_p50_us=$(val "$s" rr_p50_us) cross_node_rr_p50_us=$(val "$c" rr_p50_us) bridge_rr_p50_us=$(val "$k" rr_p50_us) vxlan_rr_p50_us=$(val "$v" rr_p50_us)" \
  "retransmits_per_gb=$(ratio "$retr" "$gb") switch_cpu_s_per_gb=$(ratio "$cpu" "$gb")" \
  "idle_cpu_pct=$idle_pct switch_drops=$((drops1 - drops0))" | sed 's/^summary: //'
