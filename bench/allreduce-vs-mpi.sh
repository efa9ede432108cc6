#!/usr/bin/env bash
# Skein vs Open MPI vs MPICH: the same in-place f32-sum allreduce sweep on 2 ranks over
# loopback TCP, in one run, one after the other. Shared memory is off for the peers (Open MPI:
# btl tcp,self on lo; MPICH: MPIR_CVAR_NOLOCAL=1 and UCX over tcp on lo), because Skein's
# ranks talk TCP. Prints each sweep, a side-by-side table, and one summary line last.
#
# Needs (Debian): openmpi-bin libopenmpi-dev mpich libmpich-dev; cargo.
# Knobs: MIN_BYTES (default 8), MAX_BYTES (default 256M), SKEIN_* variables pass through to
# skein-allreduce (e.g. SKEIN_SPIN, SKEIN_CHUNK), CARGO_TARGET_DIR as usual.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
MIN_BYTES=${MIN_BYTES:-8}
MAX_BYTES=${MAX_BYTES:-256M}

for c in cargo mpicc.openmpi mpirun.openmpi mpicc.mpich mpirun.mpich python3; do
    command -v "$c" >/dev/null || {
        echo "missing command: $c (apt-get install openmpi-bin libopenmpi-dev mpich libmpich-dev)" >&2
        exit 2
    }
done

work=$(mktemp -d)
cleanup() {
    # Only the rank we started in the background, by its id.
    if [ -n "${skein_rank1:-}" ]; then kill "$skein_rank1" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "# building skein-allreduce (release) and the MPI driver" >&2
(cd "$repo" && cargo build --release -q -p skein-collectives --bin skein-allreduce)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
skein="$target_dir/release/skein-allreduce"
mpicc.openmpi -O2 -o "$work/allreduce-openmpi" "$here/allreduce-mpi.c"
mpicc.mpich -O2 -o "$work/allreduce-mpich" "$here/allreduce-mpi.c"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_skein() {
    local port
    port=$(free_port)
    SKEIN_RANK=1 SKEIN_WORLD_SIZE=2 SKEIN_RENDEZVOUS="127.0.0.1:$port" \
        "$skein" bench -b "$MIN_BYTES" -e "$MAX_BYTES" >"$work/skein-rank1.txt" 2>&1 &
    skein_rank1=$!
    SKEIN_RANK=0 SKEIN_WORLD_SIZE=2 SKEIN_RENDEZVOUS="127.0.0.1:$port" \
        "$skein" bench -b "$MIN_BYTES" -e "$MAX_BYTES" >"$work/skein.txt"
    wait "$skein_rank1"
    skein_rank1=
}

run_openmpi() {
    mpirun.openmpi --allow-run-as-root -np 2 \
        --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo \
        "$work/allreduce-openmpi" -b "$MIN_BYTES" -e "$MAX_BYTES" >"$work/openmpi.txt"
}

run_mpich() {
    # ch4:ucx in Debian: NOLOCAL keeps MPICH off its shared-memory path, UCX_TLS keeps UCX on TCP.
    MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self UCX_NET_DEVICES=lo \
        mpirun.mpich -np 2 "$work/allreduce-mpich" -b "$MIN_BYTES" -e "$MAX_BYTES" >"$work/mpich.txt"
}

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for peer in skein openmpi mpich; do
    echo "# running $peer" >&2
    "run_$peer"
    cat "$work/$peer.txt"
    echo
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$work/skein.txt" "$work/openmpi.txt" "$work/mpich.txt" <<'PY'
import sys

def rows(path):
    out = {}
    for line in open(path):
        f = line.split()
        if not f or f[0].startswith("#") or not f[0].isdigit():
            continue
        out[int(f[0])] = {"algo": f[4], "us": float(f[5]), "busbw": float(f[7]), "wrong": f[8]}
    return out

skein, ompi, mpich = (rows(p) for p in sys.argv[1:4])
print("# side by side (busbw GB/s, time us):")
print("# %10s %20s %9s %9s %9s %11s %11s %11s %9s" % (
    "size", "skein algorithm", "skein", "openmpi", "mpich", "skein us", "openmpi us", "mpich us", "vs best"))
print("# (vs best: the faster peer's time / Skein's time, i.e. Skein busbw / best peer busbw)")
for size in sorted(skein):
    s, o, m = skein[size], ompi.get(size), mpich.get(size)
    ob = o["busbw"] if o else float("nan")
    mb = m["busbw"] if m else float("nan")
    # Same bytes, so the busbw ratio is the time ratio (which small sizes print non-zero).
    best_us = min(x["us"] for x in (o, m) if x) if (o or m) else float("nan")
    ratio = best_us / s["us"] if s["us"] > 0 else float("nan")
    print("  %10d %20s %9.3f %9.3f %9.3f %11.2f %11.2f %11.2f %8.2fx" % (
        size, s["algo"], s["busbw"], ob, mb, s["us"],
        o["us"] if o else float("nan"), m["us"] if m else float("nan"), ratio))
bad = [(n, r[size]["wrong"]) for n, r in (("skein", skein), ("openmpi", ompi), ("mpich", mpich))
       for size in r if r[size]["wrong"] not in ("0", "N/A")]
if bad:
    print("# WRONG RESULTS: %s" % bad)

def get(r, size, key):
    v = r.get(size, {}).get(key)
    return "nan" if v is None else ("%.3f" % v if key == "busbw" else "%.2f" % v)

big, small = 64 << 20, 8
print(" ".join([
    "skein_busbw_gbytes_64mib=" + get(skein, big, "busbw"),
    "openmpi_busbw_gbytes_64mib=" + get(ompi, big, "busbw"),
    "mpich_busbw_gbytes_64mib=" + get(mpich, big, "busbw"),
    "skein_lat_us_8b=" + get(skein, small, "us"),
    "openmpi_lat_us_8b=" + get(ompi, small, "us"),
    "mpich_lat_us_8b=" + get(mpich, small, "us"),
]))
PY
