#!/usr/bin/env bash
# Two builds of palisade, side by side: CPU per request and peak RSS of the sidecar pair,
# in interleaved rounds (A, B, A, B, ...) so that a busy or noisy machine affects both alike.
#
#   bash bench/ab.sh /path/to/palisade-a /path/to/palisade-b
#
# Each round starts a fresh pair of the build (standalone, one worker thread each, the mesh
# and throwaway CA of bench/run.sh, on 127.0.6.x), warms it for 1 s, then runs wrk (HTTP/1.1,
# 16 connections) or h2load (4 connections x 10 streams; BENCH_MODE=h2 to the h2c app port,
# h2-to-h1 to the HTTP/1.1 app port, as peers.sh's h2load row) or hey at 1,000 req/s
# (BENCH_MODE=hey: 10 workers x 100 req/s, the run of peers.sh's vCPU column) for BENCH_DURATION
# seconds. CPU is utime+stime of both sidecars from /proc (10 ms ticks) over the requests
# answered: microseconds of CPU per request through the pair. Prints every round, then the
# medians per build.
#
# Env: BENCH_ROUNDS=8 (pairs of rounds)  BENCH_DURATION=5  BENCH_MODE=wrk|h2|h2-to-h1|hey  BENCH_KEEP=1
#      BENCH_PALISADE, BENCH_SHOP (prebuilt binary and shop app for the CA and the app: no build)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 2 ] || { echo "usage: bash bench/ab.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$1 B=$2
ROUNDS=${BENCH_ROUNDS:-8}
DUR=${BENCH_DURATION:-5}
MODE=${BENCH_MODE:-wrk}
H1_PORT=18080
H2_PORT=18081

log() { printf '[bench-ab %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for bin in "$A" "$B"; do [ -x "$bin" ] || die "$bin is not an executable"; done
case $MODE in wrk) command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)" ;;
  h2 | h2-to-h1) command -v h2load >/dev/null || die "h2load is missing (apt-get install nghttp2-client)" ;;
  hey) command -v hey >/dev/null || die "hey is missing (apt-get install hey)" ;;
  *) die "BENCH_MODE must be wrk, h2, h2-to-h1 or hey, not $MODE" ;; esac

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir bench-ab
build_release # for the CA and the app; the sidecars are A and B

standalone_setup 6


# round LABEL BINARY: one fresh pair, one load run; appends "label req/s cpu-us/req rss-out rss-in".
round() {
  local label=$1 bin=$2 pids
  start_standalone_pair "$bin" "$label"
  pids=("${PAIR_PIDS[@]}")
  local url=http://$CLIENT_IP:15001/healthz host=server.bench:$H1_PORT out=$WORK/$label.txt
  timeout -k 5 30 wrk -t1 -c16 -d1s -H "Host: $host" "$url" >/dev/null
  local t0=$(($(cpu_ticks "${pids[0]}") + $(cpu_ticks "${pids[1]}"))) requests
  if [ "$MODE" = hey ]; then
    timeout -k 5 $((DUR + 30)) hey -z "${DUR}s" -c 10 -q 100 -host "$host" "$url" >"$out"
    requests=$(awk '/Status code distribution:/ {s = 1; next} s && /\[200\]/ {print $2}' "$out")
    grep -q 'Error distribution' "$out" && die "hey saw errors: $(cat "$out")"
  elif [ "$MODE" != wrk ]; then
    local authority=server-h2.bench:$H2_PORT
    [ "$MODE" = h2 ] || authority=$host
    timeout -k 5 $((DUR + 30)) h2load -c4 -m10 -D "$DUR" -H ":authority: $authority" "$url" >"$out"
    requests=$(awk '/^requests:/ {print $8}' "$out")
  else
    timeout -k 5 $((DUR + 30)) wrk -t1 -c16 -d"${DUR}s" -H "Host: $host" "$url" >"$out"
    grep -qE 'Non-2xx|Socket errors' "$out" && die "wrk saw errors: $(cat "$out")"
    requests=$(awk '/requests in/ {print $1}' "$out")
  fi
  local t1=$(($(cpu_ticks "${pids[0]}") + $(cpu_ticks "${pids[1]}")))
  [ "${requests:-0}" -gt 0 ] || die "no requests answered in round $label: $(cat "$out")"
  printf '%s %d %.2f %s %s\n' "${label%%.*}" $((requests / DUR)) \
    "$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {print t / hz * 1e6 / n}')" \
    "$(peak_rss_mib "${pids[1]}")" "$(peak_rss_mib "${pids[0]}")" | tee -a "$WORK/rounds.txt"
  kill "${pids[@]}"
  wait "${pids[@]}" 2>/dev/null || true
}

log "A = $A"
log "B = $B"
echo "build req/s cpu-us/req peak-rss-MiB-client peak-rss-MiB-server ($MODE, ${DUR}s per round)"
for i in $(seq "$ROUNDS"); do
  round "A.$i" "$A"
  round "B.$i" "$B"
done
echo
median() { # label column
  awk -v l="$1" -v c="$2" '$1 == l {print $c}' "$WORK/rounds.txt" | sort -n |
    awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
echo "medians over $ROUNDS rounds each:"
for label in A B; do
  echo "$label  req/s $(median $label 2)  cpu-us/req $(median $label 3)  peak RSS client $(median $label 4) MiB, server $(median $label 5) MiB"
done
