#!/usr/bin/env python3
"""TCP request/response latency: one connection, one byte each way, N round trips.

    tcp_rr.py server PORT            # answers every byte with a byte until the client leaves
    tcp_rr.py client IP PORT COUNT   # prints "p50_us p99_us" of the round trips

Both ends disable Nagle; the first 100 round trips warm up and are not counted.
"""
import socket
import sys
import time

WARMUP = 100


def server(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(1)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(1)
        if not data:
            return
        conn.sendall(data)


def client(ip, port, count):
    conn = None
    for _ in range(50):  # the server may still be starting
        try:
            conn = socket.create_connection((ip, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    if conn is None:
        sys.exit("tcp_rr: cannot connect to %s:%d" % (ip, port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for i in range(WARMUP + count):
        start = time.perf_counter_ns()
        conn.sendall(b"x")
        if conn.recv(1) != b"x":
            sys.exit("tcp_rr: the server closed the connection")
        if i >= WARMUP:
            samples.append((time.perf_counter_ns() - start) / 1000)
    conn.close()
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(len(samples) * q))]
    print("%d %d" % (pick(0.5), pick(0.99)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        server(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
