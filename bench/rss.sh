#!/usr/bin/env bash
# What a sidecar's resident set is made of: one pair (standalone, one worker thread each,
# bench/mesh.yaml on 127.0.8.x) gets the load mix of peers.sh's Palisade row (wrk, then h2load
# to the HTTP/1.1 port, then hey at 1k req/s), with each sidecar's peak RSS after each; then
# the server sidecar's resident memory by mapping (binary segments, heap, libraries) and which
# of its code pages lie inside the release layout's packed region (layout/symbol-order.txt)
# or outside it, with the functions on the pages outside.
#
#   bash bench/rss.sh [BINARY]        (default: a release build of this checkout)
#
# Env: BENCH_DURATION=6 (s per load run)  RSS_TOP=25 (functions listed)  BENCH_KEEP=1
#      BENCH_PALISADE, BENCH_SHOP (see bench/lib.sh)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${BENCH_DURATION:-6}
H1_PORT=18080

log() { printf '[bench-rss %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
require_tools wrk:wrk h2load:nghttp2-client hey:hey
bench_workdir bench-rss
prebuilt_or_release "$@"

standalone_setup 8 18080

start_standalone_pair "$BIN"
pids=("${PAIR_PIDS[@]}")

url=http://$CLIENT_IP:15001/healthz
host=server.bench:$H1_PORT
peaks() { log "after $1: peak RSS server $(peak_rss_mib "${pids[0]}" 2) MiB, client $(peak_rss_mib "${pids[1]}" 2) MiB"; }
timeout -k 5 $((DUR + 30)) wrk -t1 -c16 -d"${DUR}s" -H "Host: $host" "$url" >"$WORK/wrk.txt"
peaks wrk
timeout -k 5 $((DUR + 30)) h2load -c4 -m10 -D "$DUR" -H ":authority: $host" "$url" >"$WORK/h2load.txt"
peaks h2load
timeout -k 5 $((DUR + 30)) hey -z "${DUR}s" -c 10 -q 100 -host "$host" "$url" >"$WORK/hey.txt"
peaks hey

echo "peak RSS MiB: server $(peak_rss_mib "${pids[0]}" 2), client $(peak_rss_mib "${pids[1]}" 2)"
for i in 0 1; do
  printf '%s: ' "$([ "$i" = 0 ] && echo server || echo client)"
  grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/${pids[$i]}/status" | tr -s ' \t\n' ' '
  echo
done
echo
echo "== server sidecar, resident KiB by mapping"
awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6) " " $2} /^Rss:/ {rss[name] += $2}
  END {for (n in rss) if (rss[n] >= 64) print rss[n], n}' "/proc/${pids[0]}/smaps" | sort -rn
echo
echo "== server sidecar, code pages and the layout"
python3 "$ROOT/bench/text-pages.py" "${pids[0]}" "$BIN" "$ROOT/layout/symbol-order.txt" "${RSS_TOP:-25}"
