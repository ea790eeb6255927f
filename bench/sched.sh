#!/usr/bin/env bash
# How much of a saturated sidecar pair's throughput the kernel's task placement costs: the same
# pair under wrk and h2load, left to the scheduler ("free") and with the outbound sidecar held
# to CPU 0 and the inbound one to CPU 1 ("pinned"), in alternating rounds. Each run prints its
# req/s, the machine's idle share and the pair's CPU per request.
#
#   bash bench/sched.sh [BINARY]          (default: a release build of this checkout)
#
# Why: on 2 cores, the client, both sidecars and the app are four single-threaded processes.
# A loopback TCP write wakes its reader with a synchronous wake-up, which the scheduler places
# on the writer's CPU; a sidecar keeps running after the write (it has more ready work), so the
# woken process waits there while the other CPU runs out of work, and an idle CPU does not
# pull a task that ran under 0.5 ms ago (sched migration cost). The idle share is the measure;
# pinning is the experiment that shows what it costs, not a setting the benchmarks use
# (peers.sh pins nothing, and placement is the operator's).
#
# Env: BENCH_ROUNDS=3 (free/pinned pairs of runs per load)  BENCH_DURATION=5
#      BENCH_PALISADE, BENCH_SHOP (see bench/lib.sh)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-5}
H1_PORT=18080

log() { printf '[bench-sched %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
require_tools wrk:wrk h2load:nghttp2-client taskset:util-linux
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (has $(nproc))"
bench_workdir bench-sched
prebuilt_or_release "$@"

standalone_setup 5
start_standalone_pair "$BIN"
server_pid=${PAIR_PIDS[0]} client_pid=${PAIR_PIDS[1]}
url=http://$CLIENT_IP:15001/healthz host=server.bench:$H1_PORT
timeout -k 5 30 wrk -t1 -c16 -d1s -H "Host: $host" "$url" >/dev/null

idle_and_total() { awk '$1 == "cpu" {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat; }
place() { # free|pinned: every thread of both sidecars
  local out=0-$(($(nproc) - 1)) in=0-$(($(nproc) - 1))
  [ "$1" = pinned ] && out=0 in=1
  taskset -a -p -c "$out" "$client_pid" >/dev/null
  taskset -a -p -c "$in" "$server_pid" >/dev/null
}

# run PLACEMENT LOAD: appends "placement load req/s idle% cpu-us/req".
run() {
  local placement=$1 load=$2 out=$WORK/$1.$2.txt requests i0 t0 i1 t1 c0 c1
  place "$placement"
  read -r i0 t0 <<<"$(idle_and_total)"
  c0=$(($(cpu_ticks "$client_pid") + $(cpu_ticks "$server_pid")))
  case $load in
    wrk)
      timeout -k 5 $((DUR + 30)) wrk -t1 -c16 -d"${DUR}s" -H "Host: $host" "$url" >"$out"
      grep -qE 'Non-2xx|Socket errors' "$out" && die "wrk saw errors: $(cat "$out")"
      requests=$(awk '/requests in/ {print $1}' "$out") ;;
    h2load)
      timeout -k 5 $((DUR + 30)) h2load -c4 -m10 -D "$DUR" -H ":authority: $host" "$url" >"$out"
      requests=$(awk '/^requests:/ {gsub(/,/, ""); print $8}' "$out") ;;
  esac
  c1=$(($(cpu_ticks "$client_pid") + $(cpu_ticks "$server_pid")))
  read -r i1 t1 <<<"$(idle_and_total)"
  [ "${requests:-0}" -gt 0 ] || die "no requests answered ($placement $load): $(cat "$out")"
  awk -v p="$placement" -v l="$load" -v n="$requests" -v d="$DUR" -v idle=$((i1 - i0)) -v total=$((t1 - t0)) \
    -v cpu=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%-6s %-6s %8d %5.1f %7.2f\n", p, l, n / d, 100 * idle / total, cpu / hz * 1e6 / n}' |
    tee -a "$WORK/runs.txt"
}

echo "placement load   req/s  idle% cpu-us/req (pair; ${DUR}s per run)"
for i in $(seq "$ROUNDS"); do
  for load in wrk h2load; do
    run free "$load"
    run pinned "$load"
  done
done
place free
echo
echo "medians over $ROUNDS runs each:"
for load in wrk h2load; do
  for placement in free pinned; do
    awk -v p="$placement" -v l="$load" '$1 == p && $2 == l {print $3, $4, $5}' "$WORK/runs.txt" |
      sort -n | awk -v p="$placement" -v l="$load" '{r[NR] = $1; line[NR] = $0} END {
        m = int((NR + 1) / 2); split(line[m], f, " ")
        printf "%-6s %-6s req/s %d (run with the median req/s: idle %s%%, %s cpu-us/req)\n", p, l, f[1], f[2], f[3] }'
  done
done
