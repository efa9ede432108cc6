# Fuller measurements for bench/lab-pod-to-pod.sh, with the same interface as the peers'
# helpers in ../shared/bench/lib.sh. Sourced after that file, it replaces `tcp_gbps` and
# `rtt_us` so that Skein and every peer script (run unchanged, from a copy of its folder whose
# lib.sh sources this file) are measured by the same code. Each function still prints what
# the original prints (the peer's summary line stays the peer's own figure) and also appends
# `KEY=VALUE` lines to $BENCH_RECORD:
#   tcp1_gbps, tcp4_gbps            iperf3 TCP, 1 and 4 streams (receiver side)
#   retransmits, gigabytes          TCP retransmits and GB sent over both runs
#   cpu_s                           CPU seconds of the processes in $BENCH_CPU_PIDS meanwhile
#   ping_p50_us, ping_p99_us        ICMP echo over 500 pings 2 ms apart
#   rr_p50_us, rr_p99_us            TCP request/response, 1 byte each way (bench/lib/tcp_rr.py)
# The first 1-stream run is exactly the original `tcp_gbps`'s. The request/response test needs
# the server's namespace, which `rtt_us` is not given: it uses the one the last `tcp_gbps`
# recorded (every peer script measures throughput, then RTT, between the same two pods).

BENCH_RECORD=${BENCH_RECORD:-/dev/null}
BENCH_RR_COUNT=${BENCH_RR_COUNT:-5000}
BENCH_LIB=${BENCH_LIB:-$(dirname "${BASH_SOURCE[0]}")}
record() { echo "$1=$2" >>"$BENCH_RECORD"; }

# pids_ticks: user+system clock ticks of every process in $BENCH_CPU_PIDS
pids_ticks() {
  local t=0 p
  for p in ${BENCH_CPU_PIDS:-}; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}

# tcp_streams CLIENT_NS SERVER_NS SERVER_IP STREAMS: prints "GBPS RETRANSMITS BYTES_SENT TICKS"
tcp_streams() {
  local pidf t0 t1 out; pidf=$(mktemp)
  ip netns exec "$2" iperf3 -s -1 -D -p 5299 -I "$pidf" >/dev/null 2>&1; sleep 0.3
  t0=$(pids_ticks)
  out=$(ip netns exec "$1" timeout $((BENCH_SECONDS + 15)) iperf3 -c "$3" -p 5299 -P "$4" -t "$BENCH_SECONDS" -J 2>/dev/null |
    python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print("%.2f %d %d" % (e["sum_received"]["bits_per_second"]/1e9, e["sum_sent"].get("retransmits", 0), e["sum_sent"]["bytes"]))' 2>/dev/null || echo "0 0 0")
  t1=$(pids_ticks)
  stop_pidfile "$pidf"
  echo "$out $((t1 - t0))"
}

tcp_gbps() {
  local one four
  record server_ns "$2" # for rtt_us's request/response test (callers may run this in a subshell)
  one=($(tcp_streams "$1" "$2" "$3" 1))
  four=($(tcp_streams "$1" "$2" "$3" 4))
  record tcp1_gbps "${one[0]}"
  record tcp4_gbps "${four[0]}"
  record retransmits $((one[1] + four[1]))
  record gigabytes "$(python3 -c "print('%.3f' % ((${one[2]} + ${four[2]}) / 1e9))")"
  record cpu_s "$(python3 -c "import os; print('%.3f' % ((${one[3]} + ${four[3]}) / os.sysconf('SC_CLK_TCK')))")"
  echo "${one[0]}"
}

# rr_us CLIENT_NS SERVER_NS SERVER_IP: prints "P50 P99" of TCP request/response round trips
rr_us() {
  local srv out
  ip netns exec "$2" python3 "$BENCH_LIB/tcp_rr.py" server 5297 &
  srv=$!
  out=$(ip netns exec "$1" timeout 120 python3 "$BENCH_LIB/tcp_rr.py" client "$3" 5297 "$BENCH_RR_COUNT" || echo "0 0")
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
  echo "$out"
}

rtt_us() {
  local pings rr server
  pings=($(ip netns exec "$1" ping -c 500 -i 0.002 "$2" 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "%d %d\n", a[int((NR+1)/2)]*1000, a[int(NR*0.99+0.999)]*1000; else print "0 0"}'))
  record ping_p50_us "${pings[0]}"
  record ping_p99_us "${pings[1]}"
  server=$(sed -n 's/^server_ns=//p' "$BENCH_RECORD" 2>/dev/null | tail -1)
  if [ -n "$server" ]; then
    rr=($(rr_us "$1" "$server" "$2"))
    record rr_p50_us "${rr[0]}"
    record rr_p99_us "${rr[1]}"
  fi
  echo "${pings[0]}"
}
