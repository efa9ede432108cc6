#!/usr/bin/env bash
# skein-allreduce between pods on two lab nodes, through Skein's whole pipeline, against Open
# MPI and MPICH run in the same pods in the same session, and against the same ranks on the
# kernel VXLAN peer. Root; release build.
#
# 1. `skein-lab up --nodes 2` (the real skein-master, skein-agent with its device plugin on
#    the nodes' synthetic RDMA hardware, skein-cni under containerd). An Indexed Job of two
#    ranks, each asking for `skein.dev/rdma: 1` (one per node: the devices and the pod
#    anti-affinity spread them), meeting by DNS (`allreduce-bench-0.allreduce-bench`), runs in
#    its two pods, one after the other:
#      - `skein-allreduce bench` (pod-ordinal mode, the interface SKEIN_RDMA_NETDEVS and the
#        pod's own select: the pods' eth0, Skein's Geneve overlay between the nodes),
#      - Open MPI (`mpirun.openmpi`, ob1 + btl tcp on eth0) and MPICH (`mpirun.mpich`, UCX over
#        tcp on eth0) running the same sweep (bench/allreduce-mpi.c: same sizes, data,
#        iteration policy and timing), launched through the lab's remote shell as MPI
#        launchers use ssh; the MPI installation is the host's, mounted read-only.
# 2. The same two skein-allreduce ranks (explicit mode) in the two pods of the kernel VXLAN
#    overlay that ../shared/bench/peer-kernel-vxlan.sh builds (its set-up, run unchanged up to
#    its measurements, then its own iperf3/ping figures).
#
# Prints each sweep, a side-by-side table, and last one line of name=value pairs:
#   skein_pods_busbw_gbytes_64mib openmpi_pods_... mpich_pods_... skein_vxlan_...  (GB/s)
#   skein_pods_lat_us_8b openmpi_pods_... mpich_pods_... skein_vxlan_...           (µs)
#   busbw_vs_openmpi busbw_vs_mpich busbw_vs_vxlan   Skein-in-pods busbw / the other's (> 1: Skein faster)
#   lat_vs_openmpi lat_vs_mpich lat_vs_vxlan         Skein-in-pods 8 B time / the other's (< 1: Skein faster)
#
# Run from anywhere: sudo bench/allreduce-across-pods.sh
# Needs (Debian): openmpi-bin libopenmpi-dev mpich libmpich-dev iperf3 iputils-ping, and what
# the lab needs (it installs those). Knobs: MIN_BYTES (default 8), MAX_BYTES (default 64M, at
# least 64M for the summary's busbw), PROFILE (release), SKEIN_LAB_PREFIX (skbench),
# SHARED_BENCH (../shared/bench), CARGO_TARGET_DIR. The lab runs under flock
# /tmp/skein-lab.lock (one lab per host).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$repo/../shared/bench}
MIN_BYTES=${MIN_BYTES:-8}
MAX_BYTES=${MAX_BYTES:-64M}
PROFILE=${PROFILE:-release}
PREFIX=${SKEIN_LAB_PREFIX:-skbench}

[ "$(id -u)" = 0 ] || { echo "run as root (the lab and the peer use network namespaces)" >&2; exit 2; }
[ -f "$SHARED_BENCH/peer-kernel-vxlan.sh" ] || { echo "peer scripts not found in $SHARED_BENCH (set SHARED_BENCH)" >&2; exit 2; }
for c in cargo mpicc.openmpi mpirun.openmpi mpicc.mpich mpirun.mpich python3 flock iperf3 ping; do
    command -v "$c" >/dev/null || {
        echo "missing command: $c (apt-get install openmpi-bin libopenmpi-dev mpich libmpich-dev iperf3 iputils-ping)" >&2
        exit 2
    }
done

if [ -z "${SKEIN_BENCH_BUILT:-}" ]; then
    echo "# building skein-lab, skein-master, skein-agent, skein-cni, skein-allreduce ($PROFILE)" >&2
    flag=()
    [ "$PROFILE" = release ] && flag=(--release)
    (cd "$repo" && cargo build "${flag[@]}" -q -p skein-lab -p skein-master -p skein-agent -p skein-cni \
        -p skein-collectives --bin skein-lab --bin skein-master --bin skein-agent --bin skein-cni --bin skein-allreduce)
    # One lab per host: hold the lab lock from here to the end (the build stays outside it).
    echo "# waiting for /tmp/skein-lab.lock" >&2
    exec env SKEIN_BENCH_BUILT=1 flock -w 7200 /tmp/skein-lab.lock "$0" "$@"
fi

target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/$PROFILE"
LAB=("$bin/skein-lab" --prefix "$PREFIX")
work=$(mktemp -d /tmp/skein-bench-XXXXXX)
chmod 755 "$work"
cleanup() {
    "${LAB[@]}" down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# What the pods mount at /bench: the workspace's skein-allreduce and skein-lab (the remote
# shell), the MPI drivers built against the host's MPIs, and the scripts.
cp "$bin/skein-allreduce" "$bin/skein-lab" "$work/"
mpicc.openmpi -O2 -o "$work/allreduce-openmpi" "$repo/bench/allreduce-mpi.c"
mpicc.mpich -O2 -o "$work/allreduce-mpich" "$repo/bench/allreduce-mpi.c"
printf '#!/bin/sh\nexec /bench/skein-lab remote-shell "$@"\n' >"$work/rsh"
token=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
cat >"$work/rank.sh" <<EOF
#!/bin/sh
# One rank of the bench: Skein's sweep, then (rank 0) the MPI sweeps over the same pods.
set -e
sweep="-b $MIN_BYTES -e $MAX_BYTES"
if [ "\$JOB_COMPLETION_INDEX" = 0 ]; then
    # Hydra may reach its own host through the launcher too.
    /bench/skein-lab remote-shell-server >/dev/null 2>&1 &
    echo "=== skein"
    /bench/skein-allreduce bench \$sweep
    /bench/skein-lab remote-shell --wait 120 allreduce-bench-1.allreduce-bench true
    echo "=== openmpi"
    mpirun.openmpi --allow-run-as-root -np 2 --host allreduce-bench-0:1,allreduce-bench-1.allreduce-bench:1 \\
        --mca plm_rsh_agent /bench/rsh --mca orte_keep_fqdn_hostnames 1 --mca pml ob1 --mca btl tcp,self \\
        --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 /bench/allreduce-openmpi \$sweep
    echo "=== mpich"
    MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 mpirun.mpich -launcher rsh -launcher-exec /bench/rsh \\
        -iface eth0 -hosts allreduce-bench-0,allreduce-bench-1.allreduce-bench -n 2 /bench/allreduce-mpich \$sweep
    echo "=== end"
    /bench/skein-lab remote-shell --stop allreduce-bench-1.allreduce-bench
else
    /bench/skein-allreduce bench \$sweep
    exec /bench/skein-lab remote-shell-server
fi
EOF
chmod 755 "$work"/*
cat >"$work/job.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: allreduce-bench}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: allreduce-bench}
  ports: [{name: rendezvous, port: 29600}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: allreduce-bench}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  backoffLimit: 0
  activeDeadlineSeconds: 3600
  template:
    metadata: {labels: {app: allreduce-bench}}
    spec:
      subdomain: allreduce-bench
      restartPolicy: Never
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: allreduce-bench}}}
      containers:
      - name: rank
        # The lab's base image (BusyBox); the host's MPI installation comes in through /usr.
        image: localhost/skein-lab/node:1
        command: ["/bin/sh", "/bench/rank.sh"]
        env:
        - {name: SKEIN_TRANSPORT, value: tcp}
        - {name: SKEIN_WORLD_SIZE, value: "2"}
        - {name: SKEIN_SERVICE, value: allreduce-bench}
        - name: SKEIN_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - {name: SKEIN_LAB_REMOTE_SHELL_TOKEN, value: "$token"}
        - {name: OMPI_ALLOW_RUN_AS_ROOT, value: "1"}
        - {name: OMPI_ALLOW_RUN_AS_ROOT_CONFIRM, value: "1"}
        - {name: HOME, value: /tmp}
        resources:
          limits: {skein.dev/rdma: 1}
        volumeMounts:
        - {name: usr, mountPath: /usr, readOnly: true}
        - {name: openmpi-etc, mountPath: /etc/openmpi, readOnly: true}
        - {name: bench, mountPath: /bench, readOnly: true}
      volumes:
      - {name: usr, hostPath: {path: /usr, type: Directory}}
      - {name: openmpi-etc, hostPath: {path: /etc/openmpi, type: Directory}}
      - {name: bench, hostPath: {path: "$work", type: Directory}}
EOF

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"${LAB[@]}" up --nodes 2 --bin-dir "$bin" >&2
"${LAB[@]}" apply -f "$work/job.yaml" >&2
state=
for _ in $(seq 1 1800); do
    state=$("${LAB[@]}" get jobs -n default | awk '$2 == "allreduce-bench" {print $3}')
    [ "$state" = Complete ] || [ "$state" = Failed ] && break
    sleep 1
done
"${LAB[@]}" get pods -n default -o wide >&2
rank0=$("${LAB[@]}" get pods -n default | awk '$2 ~ /^allreduce-bench-0-/ {print $2}' | tail -1)
"${LAB[@]}" logs -n default "$rank0" >"$work/pods.txt" || true
if [ "$state" != Complete ]; then
    echo "the bench job did not complete ($state); rank 0 said:" >&2
    cat "$work/pods.txt" >&2
    exit 1
fi
nodes=$("${LAB[@]}" get pods -n default -o wide | awk '$2 ~ /^allreduce-bench-/ {print $6}' | sort -u | tr '\n' ' ')
echo "# ranks ran on: $nodes" >&2
awk '/^=== /{f=$2; next} f {print > ("'"$work"'/" f ".txt")}' "$work/pods.txt"
"${LAB[@]}" down >&2

# The same ranks on the kernel VXLAN peer: its set-up, our ranks, then its own figures.
marker='gbps=$(tcp_gbps'
grep -qF "$marker" "$SHARED_BENCH/peer-kernel-vxlan.sh" || { echo "peer-kernel-vxlan.sh has no line starting $marker" >&2; exit 1; }
{
    sed -n "1,/^${marker//[\$()]/.}/p" "$SHARED_BENCH/peer-kernel-vxlan.sh" | sed '$d' | sed "s|^cd \"\$(dirname \"\$0\")\"|cd \"$SHARED_BENCH\"|"
    cat <<EOF
# --- skein-allreduce ranks in the two pods of the overlay (explicit mode) ---
SKEIN_RANK=1 SKEIN_WORLD_SIZE=2 SKEIN_RENDEZVOUS=10.253.1.10:29600 ip netns exec "\${P}p2" "$bin/skein-allreduce" bench -b $MIN_BYTES -e $MAX_BYTES >"$work/vxlan-rank1.txt" 2>&1 &
rank1=\$!
SKEIN_RANK=0 SKEIN_WORLD_SIZE=2 SKEIN_RENDEZVOUS=10.253.1.10:29600 ip netns exec "\${P}p1" "$bin/skein-allreduce" bench -b $MIN_BYTES -e $MAX_BYTES >"$work/vxlan.txt"
wait "\$rank1"
EOF
    sed -n "/^${marker//[\$()]/.}/,\$p" "$SHARED_BENCH/peer-kernel-vxlan.sh"
} >"$work/vxlan-peer.sh"
echo "# running the same ranks on the kernel VXLAN peer" >&2
bash "$work/vxlan-peer.sh" >"$work/vxlan-peer.txt"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for part in skein openmpi mpich vxlan; do
    echo "# --- $part ---"
    cat "$work/$part.txt"
done
echo "# --- peer-kernel-vxlan.sh's own figures ---"
tail -1 "$work/vxlan-peer.txt"

python3 - "$work/skein.txt" "$work/openmpi.txt" "$work/mpich.txt" "$work/vxlan.txt" <<'PY'
import sys

def rows(path):
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) != 9 or not f[0].isdigit():
            continue
        out[int(f[0])] = {"algo": f[4], "us": float(f[5]), "busbw": float(f[7]), "wrong": f[8]}
    return out

skein, ompi, mpich, vxlan = (rows(p) for p in sys.argv[1:5])
print("# side by side (busbw GB/s, time us):")
print("# %10s %20s %9s %9s %9s %9s %11s %11s %11s %11s" % (
    "size", "skein algorithm", "pods", "openmpi", "mpich", "vxlan", "pods us", "openmpi us", "mpich us", "vxlan us"))
nan = float("nan")
for size in sorted(skein):
    s, o, m, v = (r.get(size) for r in (skein, ompi, mpich, vxlan))
    get = lambda r, k: r[k] if r else nan
    print("  %10d %20s %9.3f %9.3f %9.3f %9.3f %11.2f %11.2f %11.2f %11.2f" % (
        size, s["algo"], s["busbw"], get(o, "busbw"), get(m, "busbw"), get(v, "busbw"),
        s["us"], get(o, "us"), get(m, "us"), get(v, "us")))
bad = [(n, size, r[size]["wrong"]) for n, r in (("skein", skein), ("openmpi", ompi), ("mpich", mpich), ("vxlan", vxlan))
       for size in r if r[size]["wrong"] not in ("0", "N/A")]
if bad:
    print("# WRONG RESULTS: %s" % bad)

big, small = 64 << 20, 8
def val(r, size, key):
    x = r.get(size, {}).get(key)
    return nan if x is None else x
def fmt(x, digits):
    return "nan" if x != x else ("%%.%df" % digits) % x
def ratio(a, b):
    return nan if (a != a or b != b or b == 0) else a / b
sb, sl = val(skein, big, "busbw"), val(skein, small, "us")
pairs = [
    ("skein_pods_busbw_gbytes_64mib", fmt(sb, 3)),
    ("openmpi_pods_busbw_gbytes_64mib", fmt(val(ompi, big, "busbw"), 3)),
    ("mpich_pods_busbw_gbytes_64mib", fmt(val(mpich, big, "busbw"), 3)),
    ("skein_vxlan_busbw_gbytes_64mib", fmt(val(vxlan, big, "busbw"), 3)),
    ("skein_pods_lat_us_8b", fmt(sl, 2)),
    ("openmpi_pods_lat_us_8b", fmt(val(ompi, small, "us"), 2)),
    ("mpich_pods_lat_us_8b", fmt(val(mpich, small, "us"), 2)),
    ("skein_vxlan_lat_us_8b", fmt(val(vxlan, small, "us"), 2)),
    ("busbw_vs_openmpi", fmt(ratio(sb, val(ompi, big, "busbw")), 2)),
    ("busbw_vs_mpich", fmt(ratio(sb, val(mpich, big, "busbw")), 2)),
    ("busbw_vs_vxlan", fmt(ratio(sb, val(vxlan, big, "busbw")), 2)),
    ("lat_vs_openmpi", fmt(ratio(sl, val(ompi, small, "us")), 2)),
    ("lat_vs_mpich", fmt(ratio(sl, val(mpich, small, "us")), 2)),
    ("lat_vs_vxlan", fmt(ratio(sl, val(vxlan, small, "us")), 2)),
]
print(" ".join("%s=%s" % p for p in pairs))
PY
