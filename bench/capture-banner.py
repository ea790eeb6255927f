#!/usr/bin/env python3
"""Server-speaks-first probe for bench/capture.sh.

  capture-banner.py serve HOST PORT [PORT...]   banner server: on accept it sends one line,
                                                then holds the connection until the peer
                                                closes it
  capture-banner.py probe HOST PORT COUNT       COUNT sequential connections, each timed from
                                                just before connect() to the first byte read

The probe prints one summary line of key=value pairs: how many connections got the banner,
how many were closed (or reset) before any byte came, how many timed out, and the median,
p99 and maximum time to the banner, or else to the close, in microseconds.
"""

import socket
import sys
import threading
import time

BANNER = b"220 palisade-bench banner ready\r\n"
# A connection that shows nothing for this long counts as timed out.
PROBE_TIMEOUT_S = 5.0


def serve(host, ports):
    def hold(conn):
        with conn:
            try:
                conn.sendall(BANNER)
                conn.settimeout(60)
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    def accept_loop(listener):
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=hold, args=(conn,), daemon=True).start()

    threads = []
    for port in ports:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        t = threading.Thread(target=accept_loop, args=(listener,), daemon=True)
        t.start()
        threads.append(t)
    print(f"banner server on {host} ports {ports}", flush=True)
    for t in threads:
        t.join()


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100)
    return sorted_values[int(rank) - 1]


def probe(host, port, count):
    banner_us, closed_us, timeouts, errors = [], [], 0, []
    for _ in range(count):
        start = time.perf_counter_ns()
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as s:
                s.settimeout(PROBE_TIMEOUT_S)
                data = s.recv(1)
                elapsed = (time.perf_counter_ns() - start) / 1000
                (banner_us if data else closed_us).append(elapsed)
        except socket.timeout:
            timeouts += 1
        except ConnectionError as e:
            closed_us.append((time.perf_counter_ns() - start) / 1000)
            errors.append(type(e).__name__)
        except OSError as e:
            errors.append(f"{type(e).__name__}:{e.errno}")
    fields = [f"count={count}", f"banner={len(banner_us)}", f"closed={len(closed_us)}",
              f"timeouts={timeouts}"]
    for name, values in (("banner", banner_us), ("closed", closed_us)):
        values.sort()
        if values:
            fields += [f"{name}_p50_us={percentile(values, 50):.0f}",
                       f"{name}_p99_us={percentile(values, 99):.0f}",
                       f"{name}_max_us={values[-1]:.0f}"]
    if errors:
        fields.append("errors=" + ",".join(sorted(set(errors))))
    print(" ".join(fields), flush=True)


def main(argv):
    if len(argv) >= 4 and argv[1] == "serve":
        serve(argv[2], [int(p) for p in argv[3:]])
    elif len(argv) == 5 and argv[1] == "probe":
        probe(argv[2], int(argv[3]), int(argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
