#!/usr/bin/env bash
# Where a sidecar pair spends its CPU under load: perf samples both sidecars while wrk or
# h2load runs through them, then prints the hottest symbols (self time, children excluded)
# of each, and the split between Palisade's code, the kernel and libc.
#
#   bash bench/profile.sh [BINARY]        (default: a release build of this checkout)
#
# The pair is the one of bench/ab.sh (standalone, one worker thread each, bench/mesh.yaml on
# 127.0.7.x). Modes: wrk (HTTP/1.1, 16 connections, HTTP/1.1 app port), h2 (h2load, 4
# connections x 10 streams, to the h2c app port), h2-to-h1 (h2load to the HTTP/1.1 app port,
# as peers.sh's h2load row), hey (1,000 req/s in bursts of 10, as peers.sh's vCPU column:
# where the CPU of a mostly idle sidecar goes). perf is linux-perf from Debian; in a VM it samples cpu-clock.
#
# Env: BENCH_MODE=wrk|h2|h2-to-h1|hey  BENCH_DURATION=10  PROFILE_TOP=40  BENCH_KEEP=1 (keeps
#      perf.data)  BENCH_PALISADE, BENCH_SHOP (see bench/lib.sh)
#      PROFILE_CALLERS='symbol;symbol' also prints who calls those symbols (stacks unwound
#      from DWARF, since release builds keep no frame pointers: fewer samples, 500 Hz)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${BENCH_DURATION:-10}
MODE=${BENCH_MODE:-wrk}
TOP=${PROFILE_TOP:-40}
H1_PORT=18080
H2_PORT=18081

log() { printf '[bench-profile %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
case $MODE in wrk | h2 | h2-to-h1 | hey) ;; *) die "BENCH_MODE must be wrk, h2, h2-to-h1 or hey, not $MODE" ;; esac

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
require_tools perf:linux-perf wrk:wrk h2load:nghttp2-client hey:hey
bench_workdir bench-profile
prebuilt_or_release "$@"

standalone_setup 7

start_standalone_pair "$BIN"
pids=("${PAIR_PIDS[@]}")

url=http://$CLIENT_IP:15001/healthz
timeout -k 5 30 wrk -t1 -c16 -d1s -H "Host: server.bench:$H1_PORT" "$url" >/dev/null
log "sampling both sidecars for ${DUR}s of $MODE"
callgraph=(-F 2000 -g)
[ -z "${PROFILE_CALLERS:-}" ] || callgraph=(-F 500 --call-graph dwarf,16384)
perf record -q "${callgraph[@]}" -o "$WORK/perf.data" -p "${pids[0]},${pids[1]}" -- sleep $((DUR + 1)) \
  2>"$WORK/perf-record.log" &
perf_pid=$!
sleep 0.5
case $MODE in
  wrk) timeout -k 5 $((DUR + 30)) wrk -t1 -c16 -d"${DUR}s" -H "Host: server.bench:$H1_PORT" "$url" ;;
  h2) timeout -k 5 $((DUR + 30)) h2load -c4 -m10 -D "$DUR" -H ":authority: server-h2.bench:$H2_PORT" "$url" |
    grep -E '^(finished|requests:)' ;;
  h2-to-h1) timeout -k 5 $((DUR + 30)) h2load -c4 -m10 -D "$DUR" -H ":authority: server.bench:$H1_PORT" "$url" |
    grep -E '^(finished|requests:)' ;;
  hey) timeout -k 5 $((DUR + 30)) hey -z "${DUR}s" -c 10 -q 100 -host "server.bench:$H1_PORT" "$url" |
    grep -E 'Requests/sec|\[200\]' ;;
esac
wait "$perf_pid" || die "perf record failed: $(cat "$WORK/perf-record.log")"

report() { perf report -i "$WORK/perf.data" --no-children --percent-limit 0.01 "$@" 2>/dev/null; }
echo
echo "== share of samples by object (both sidecars)"
report --sort dso --stdio -g none | awk '/^ +[0-9.]+%/ {print "  " $1, $2}' | head -12
echo
echo "== hottest $TOP symbols, self time (both sidecars)"
report --sort sym --stdio -g none | awk '/^ +[0-9.]+%/' | head -"$TOP"
IFS=';' read -r -a callers <<<"${PROFILE_CALLERS:-}"
for sym in "${callers[@]}"; do
  echo
  echo "== callers of $sym"
  report --stdio -S "$sym" -G -g caller,0.5,callee,function,percent --percent-limit 0.1 |
    grep -vE '^(#|$)' | head -60
done
if [ -n "${BENCH_KEEP:-}" ]; then log "perf data: $WORK/perf.data (perf report -i ...)"; fi
