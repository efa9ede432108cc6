#!/usr/bin/env bash
# Pod-to-pod forwarding: Skein's switch (skein-dp) against Open vSwitch's userspace datapath
# and the kernel bridge, measured in one run the same way (../shared/bench/lib.sh):
#   same-node TCP Gbit/s (iperf3), median RTT (ping), datapath CPU ns per forwarded 64-byte
#   UDP packet at a fixed offered rate, Skein's idle CPU, and Skein cross-node TCP through
#   Geneve (two node namespaces joined by an underlay veth).
# Run as root from the repository root: bench/pod-to-pod.sh
# Environment: BENCH_SECONDS (per measurement, default 5), SKEIN_DP_ARGS (extra `skein-dp run`
# flags), SHARED_BENCH (the peers' folder, default ../shared/bench).
# The last line is the summary the checks read.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$repo/../shared/bench}
[ -f "$SHARED_BENCH/lib.sh" ] || { echo "peer scripts not found in $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 2; }
BENCH_PREFIX=${BENCH_PREFIX:-skd$$}
. "$SHARED_BENCH/lib.sh"
need iperf3 ping python3 ip cargo

echo "building skein-dp (release)..." >&2
(cd "$repo" && cargo build --release -q -p skein-datapath --bin skein-dp)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
DP=$target/release/skein-dp
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  cleanup_ns
  for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$BENCH_PREFIX" || true); do ip link del "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mac() { printf '0a:58:0a:fc:00:%02x' "$1"; }

# wait_socket PATH: until the switch's control socket answers
wait_socket() {
  for _ in $(seq 1 100); do "$DP" stats --control "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "skein-dp did not come up; log:" >&2; cat "$work"/*.log >&2; exit 1
}

# --- Skein, same node: two pods, one switch, forwarding by destination MAC -----------------
for i in 1 2; do
  n="${BENCH_PREFIX}p$i"; ns "$n"
  ip link add "${BENCH_PREFIX}h$i" type veth peer name eth0 netns "$n"
  sysctl -qw "net.ipv6.conf.${BENCH_PREFIX}h$i.disable_ipv6=1"
  ip -n "$n" link set eth0 address "$(mac "$i")"
  ip -n "$n" addr add "10.252.0.$i/24" dev eth0; ip -n "$n" link set eth0 up
  ip link set "${BENCH_PREFIX}h$i" up
done
cat >"$work/l2.flows" <<F
# Known destinations by MAC; broadcast (ARP) to the other pod.
table=0,priority=100,dl_dst=$(mac 1),actions=output:1
table=0,priority=100,dl_dst=$(mac 2),actions=output:2
table=0,priority=50,in_port=1,dl_dst=ff:ff:ff:ff:ff:ff,actions=output:2
table=0,priority=50,in_port=2,dl_dst=ff:ff:ff:ff:ff:ff,actions=output:1
F
"$DP" run --flows "$work/l2.flows" --port "1=${BENCH_PREFIX}h1" --port "2=${BENCH_PREFIX}h2" \
  --control "$work/same.sock" ${SKEIN_DP_ARGS:-} 2>"$work/same.log" &
dp_pid=$!; pids+=("$dp_pid")
wait_socket "$work/same.sock"
ip netns exec "${BENCH_PREFIX}p1" ping -c 3 -W 1 -q 10.252.0.2 >/dev/null || { echo "no connectivity through skein-dp" >&2; cat "$work/same.log" >&2; exit 1; }
echo "measuring skein (same node)..." >&2
t0=$(cpu_ticks "$dp_pid"); sleep 3; t1=$(cpu_ticks "$dp_pid")
skein_idle=$(python3 -c "import os; print('%.2f' % (($t1-$t0)/os.sysconf('SC_CLK_TCK')/3*100))")
skein_tcp=$(tcp_gbps "${BENCH_PREFIX}p1" "${BENCH_PREFIX}p2" 10.252.0.2)
skein_rtt=$(rtt_us "${BENCH_PREFIX}p1" 10.252.0.2)
skein_cpu=$(cpu_ns_per_pkt "${BENCH_PREFIX}p1" "${BENCH_PREFIX}p2" 10.252.0.2 "$dp_pid")
skein_gso=$("$DP" stats --control "$work/same.sock" | tr ' ' '\n' | sed -n 's/^port_1_rx_gso=//p')
kill "$dp_pid"; wait "$dp_pid" 2>/dev/null || true
cleanup_ns

# --- Skein, cross node: Geneve between two node namespaces -----------------------------------
ul=192.168.251
for i in 1 2; do
  node="${BENCH_PREFIX}n$i"; pod="${BENCH_PREFIX}q$i"; ns "$node"; ns "$pod"
  ip -n "$node" link add "pod$i" type veth peer name eth0 netns "$pod"
  ip netns exec "$node" sysctl -qw "net.ipv6.conf.pod$i.disable_ipv6=1"
  ip -n "$pod" link set eth0 address "$(mac "$((10 + i))")" mtu 1400
  ip -n "$pod" addr add "10.253.0.$i/24" dev eth0; ip -n "$pod" link set eth0 up
  ip -n "$node" link set "pod$i" up
done
ip -n "${BENCH_PREFIX}n1" link add ul type veth peer name ul netns "${BENCH_PREFIX}n2"
for i in 1 2; do
  ip -n "${BENCH_PREFIX}n$i" addr add "$ul.$i/24" dev ul; ip -n "${BENCH_PREFIX}n$i" link set ul up
done
for i in 1 2; do
  j=$((3 - i))
  cat >"$work/geneve$i.flows" <<F
tunnel=10,local_ip=$ul.$i,underlay_port=100
# From the pod: into the tunnel towards the other node (VNI 5, logical ports 1 -> 2).
table=0,priority=100,in_port=1,actions=set_field:5->tun_id,set_field:$ul.$j->tun_dst,set_field:$i->tun_ingress_port,set_field:$j->tun_egress_port,output:10
# From the tunnel: to the pod.
table=0,priority=100,in_port=100,tun_id=5,actions=output:1
F
  ip netns exec "${BENCH_PREFIX}n$i" "$DP" run --flows "$work/geneve$i.flows" --port "1=pod$i" --geneve "100=$ul.$i" \
    --control "$work/node$i.sock" ${SKEIN_DP_ARGS:-} 2>"$work/node$i.log" &
  pids+=("$!")
done
wait_socket "$work/node1.sock"; wait_socket "$work/node2.sock"
ip netns exec "${BENCH_PREFIX}q1" ping -c 3 -W 1 -q 10.253.0.2 >/dev/null || { echo "no connectivity through Geneve" >&2; cat "$work"/node*.log >&2; exit 1; }
echo "measuring skein (cross node, Geneve)..." >&2
skein_cross=$(tcp_gbps "${BENCH_PREFIX}q1" "${BENCH_PREFIX}q2" 10.253.0.2)
skein_cross_rtt=$(rtt_us "${BENCH_PREFIX}q1" 10.253.0.2)
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()
cleanup_ns

# --- Peers, same run -------------------------------------------------------------------------
echo "measuring Open vSwitch userspace..." >&2
ovs=$(BENCH_PREFIX="${BENCH_PREFIX}o" bash "$SHARED_BENCH/peer-ovs-userspace.sh" | tail -1)
echo "measuring the kernel bridge..." >&2
kb=$(BENCH_PREFIX="${BENCH_PREFIX}k" bash "$SHARED_BENCH/peer-kernel-bridge.sh" | tail -1)
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
ovs_tcp=$(field "$ovs" tcp_gbps); ovs_rtt=$(field "$ovs" rtt_p50_us); ovs_cpu=$(field "$ovs" cpu_ns_per_pkt)
kb_tcp=$(field "$kb" tcp_gbps); kb_rtt=$(field "$kb" rtt_p50_us)
ratio() { python3 -c "import sys; a,b=float(sys.argv[1] or 0),float(sys.argv[2] or 0); print('%.2f' % (a/b) if b else 'n/a')" "$1" "$2"; }

printf '\n%-34s %10s %10s %10s %14s\n' "measure" "skein" "ovs-user" "kernel-br" "skein/ovs"
printf '%-34s %10s %10s %10s %14s\n' "same-node TCP (Gbit/s)" "$skein_tcp" "$ovs_tcp" "$kb_tcp" "$(ratio "$skein_tcp" "$ovs_tcp")"
printf '%-34s %10s %10s %10s %14s\n' "median RTT (us)" "$skein_rtt" "$ovs_rtt" "$kb_rtt" "$(ratio "$skein_rtt" "$ovs_rtt")"
printf '%-34s %10s %10s %10s %14s\n' "CPU per 64-byte packet (ns)" "$skein_cpu" "$ovs_cpu" "-" "$(ratio "$skein_cpu" "$ovs_cpu")"
printf '%-34s %10s %10s %10s %14s\n' "idle CPU (% of a core)" "$skein_idle" "-" "-" "-"
printf '%-34s %10s %10s %10s %14s\n' "TSO super-frames received" "$skein_gso" "-" "-" "-"
printf '%-34s %10s %10s %10s %14s\n' "cross-node TCP, Geneve (Gbit/s)" "$skein_cross" "-" "-" "-"
printf '%-34s %10s %10s %10s %14s\n' "cross-node median RTT (us)" "$skein_cross_rtt" "-" "-" "-"
echo "skein_tcp_gbps=$skein_tcp ovs_tcp_gbps=$ovs_tcp kernel_tcp_gbps=$kb_tcp skein_rtt_us=$skein_rtt ovs_rtt_us=$ovs_rtt kernel_rtt_us=$kb_rtt skein_cpu_ns_per_pkt=$skein_cpu ovs_cpu_ns_per_pkt=$ovs_cpu skein_cross_node_tcp_gbps=$skein_cross"
