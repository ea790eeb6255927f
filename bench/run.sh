#!/usr/bin/env bash
# Palisade data-plane benchmark, one command: `bash bench/run.sh`.
#
# Measures, in one run on this machine:
#   direct : client -> app
#   mesh   : client -> sidecar (outbound) -> mTLS HTTP/2 -> sidecar (inbound, L7 authz) -> app
# for HTTP/1.1 keep-alive (wrk) and HTTP/2 (h2load), printing requests/s, latency p50/p99 and
# each sidecar's peak RSS. Sidecars run in standalone mode (static config, certificates from a
# throwaway CA made by `palisade ca`), one worker thread each, all on loopback addresses
# 127.0.2.x. Installs wrk and h2load from Debian if they are missing (needs root for that).
#
# Soak (BENCH_SOAK=600, seconds): after the rounds, a paced HTTP/1.1 load through the mesh at
# 1,000 req/s (hey: 10 workers x 100 req/s) for that long, sampling each sidecar's resident
# set (VmRSS) every BENCH_SOAK_EVERY seconds, then the series, the growth from the first
# sample after warm-up to the last, and the peak (VmHWM). `BENCH_ROUNDS=0 BENCH_SOAK=600
# bash bench/run.sh` runs the 10-minute soak alone.
#
# Env: BENCH_DURATION=8 (s per run)  BENCH_CONNECTIONS=16  BENCH_STREAMS=10 (h2 streams per conn)
#      BENCH_ROUNDS=1  BENCH_WORKERS=1 (sidecar worker threads)  BENCH_KEEP=1 (keep work dir)
#      BENCH_SOAK=0 (s)  BENCH_SOAK_EVERY=30 (s)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${BENCH_DURATION:-8}
CONNS=${BENCH_CONNECTIONS:-16}
STREAMS=${BENCH_STREAMS:-10}
ROUNDS=${BENCH_ROUNDS:-1}
SOAK=${BENCH_SOAK:-0}
SOAK_EVERY=${BENCH_SOAK_EVERY:-30}
WORKERS=${BENCH_WORKERS:-1}
CLIENT_IP=127.0.2.1
SERVER_IP=127.0.2.2
H1_PORT=18080
H2_PORT=18081

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  [ "$SOAK" -gt 0 ] && ! command -v hey >/dev/null && missing+=(hey)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  log "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir bench
install_tools
build_release

# --- PKI and mesh config --------------------------------------------------------------------
"$PALISADE" ca init --out "$WORK/ca" >/dev/null
"$PALISADE" ca issue --dir "$WORK/ca" --spiffe-id spiffe://cluster.local/ns/bench/sa/client --cert "$WORK/client.crt" --key "$WORK/client.key" >/dev/null
"$PALISADE" ca issue --dir "$WORK/ca" --spiffe-id spiffe://cluster.local/ns/bench/sa/server --cert "$WORK/server.crt" --key "$WORK/server.key" >/dev/null
mkdir -p "$WORK/mesh"
cp "$ROOT/bench/mesh.yaml" "$WORK/mesh/mesh.yaml"

# --- processes ------------------------------------------------------------------------------
start_bg app-h1 "$SHOP" search --listen "$SERVER_IP:$H1_PORT"; APP1=$LAST_PID
start_bg app-h2 "$SHOP" search --listen "$SERVER_IP:$H2_PORT"; APP2=$LAST_PID
proxy() { # name ip cert key
  start_bg "$1" "$PALISADE" proxy --workload "$1" --namespace bench --service-account "$1" \
    --static-config "$WORK/mesh" --trust-anchors "$WORK/ca/root-cert.pem" --cert "$3" --key "$4" \
    --inbound "$2:15006" --outbound "$2:15001" --admin "$2:15000" --app-host "$2" \
    --worker-threads "$WORKERS"
}
proxy server "$SERVER_IP" "$WORK/server.crt" "$WORK/server.key"; SERVER_PROXY=$LAST_PID
proxy client "$CLIENT_IP" "$WORK/client.crt" "$WORK/client.key"; CLIENT_PROXY=$LAST_PID
wait_http "http://$SERVER_IP:$H1_PORT/healthz" "$APP1" app-h1
wait_http "http://$SERVER_IP:$H2_PORT/healthz" "$APP2" app-h2
wait_http "http://$SERVER_IP:15000/ready" "$SERVER_PROXY" server
wait_http "http://$CLIENT_IP:15000/ready" "$CLIENT_PROXY" client
# Readiness could come from a stale process on the same address: make sure ours are the ones up.
for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || die "a benchmark process (pid $pid) exited; logs in $WORK (set BENCH_KEEP=1): $(tail -n 3 "$WORK"/*.log)"
done
curl -fsS -o /dev/null -H "Host: server.bench:$H1_PORT" "http://$CLIENT_IP:15001/healthz" \
  || die "a request through the mesh failed: $(curl -sS -H "Host: server.bench:$H1_PORT" "http://$CLIENT_IP:15001/healthz")"

# --- load -----------------------------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
run_wrk() { # label url [host]
  local out="$WORK/wrk-$1.txt" hdr=()
  [ -n "${3:-}" ] && hdr=(-H "Host: $3")
  timeout -k 5 $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${hdr[@]}" "$2" >"$out"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1=="50%" {print $2}' "$out")
  p99=$(awk '$1=="99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$out" | tr '\n' ' ')
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rps" "$p50" "$p99" "${errors:-none}" >>"$RESULTS"
}
to_ms() { awk -v us="$1" 'BEGIN { printf "%.3fms", us / 1000 }'; }
run_h2load() { # label url [authority]
  local out="$WORK/h2load-$1.txt" logf="$WORK/h2load-$1.log" hdr=()
  [ -n "${3:-}" ] && hdr=(-H ":authority: $3")
  timeout -k 5 $((DUR + 30)) h2load -c"$CONNS" -m"$STREAMS" -D "$DUR" --log-file="$logf" "${hdr[@]}" "$2" >"$out"
  local rps p50 p99 failed
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$out")
  failed=$(awk '/^requests:/ {print $10" failed, "$12" errored"}' "$out")
  p50=$(awk '{print $3}' "$logf" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.50)+1]}')
  p99=$(awk '{print $3}' "$logf" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)+1]}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" "$failed" >>"$RESULTS"
}

for round in $(seq "$ROUNDS"); do
  log "round $round/$ROUNDS: ${DUR}s per run, $CONNS connections"
  run_wrk   "direct-http1" "http://$SERVER_IP:$H1_PORT/healthz"
  run_wrk   "mesh-http1"   "http://$CLIENT_IP:15001/healthz" "server.bench:$H1_PORT"
  run_h2load "direct-http2" "http://$SERVER_IP:$H2_PORT/healthz"
  run_h2load "mesh-http2"   "http://$CLIENT_IP:15001/healthz" "server-h2.bench:$H2_PORT"
done

rss_now_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# --- soak -----------------------------------------------------------------------------------
SOAK_SERIES=$WORK/soak.tsv
if [ "$SOAK" -gt 0 ]; then
  log "soak: ${SOAK}s at 1,000 req/s through the mesh, RSS every ${SOAK_EVERY}s"
  timeout -k 5 $((SOAK + 60)) hey -z "${SOAK}s" -c 10 -q 100 -host "server.bench:$H1_PORT" \
    "http://$CLIENT_IP:15001/healthz" >"$WORK/hey-soak.txt" 2>&1 &
  HEY=$!
  PIDS+=("$HEY")
  START=$(date +%s)
  : >"$SOAK_SERIES"
  while kill -0 "$HEY" 2>/dev/null; do
    printf '%s\t%s\t%s\n' "$(($(date +%s) - START))" "$(rss_now_kib "$CLIENT_PROXY")" \
      "$(rss_now_kib "$SERVER_PROXY")" >>"$SOAK_SERIES"
    # Bounded: hey stops itself after SOAK seconds, and timeout kills it 60 s later.
    for _ in $(seq "$SOAK_EVERY"); do kill -0 "$HEY" 2>/dev/null || break; sleep 1; done
  done
  wait "$HEY" || die "hey failed during the soak: $(tail -n 5 "$WORK/hey-soak.txt")"
fi

# --- report ---------------------------------------------------------------------------------
echo
echo "Palisade benchmark ($(date -u +%FT%TZ), $(nproc) cores, sidecars: $WORKERS worker thread(s) each)"
echo "wrk: HTTP/1.1 keep-alive, $CONNS connections; h2load: HTTP/2 (h2c from the client), $CONNS connections x $STREAMS streams; ${DUR}s each"
echo
printf '%-14s %12s %10s %10s  %s\n' "path" "req/s" "p50" "p99" "errors"
while IFS=$'\t' read -r label rps p50 p99 errors; do
  printf '%-14s %12s %10s %10s  %s\n' "$label" "$rps" "$p50" "$p99" "$errors"
done <"$RESULTS"
echo
echo "peak RSS: client sidecar $(peak_rss_mib "$CLIENT_PROXY") MiB, server sidecar $(peak_rss_mib "$SERVER_PROXY") MiB"
if [ "$SOAK" -gt 0 ]; then
  echo
  echo "soak: ${SOAK}s at 1,000 req/s (hey -c 10 -q 100), VmRSS in MiB"
  printf '%8s %10s %10s\n' "t (s)" "client" "server"
  awk -F'\t' '{printf "%8s %10.1f %10.1f\n", $1, $2/1024, $3/1024}' "$SOAK_SERIES"
  # Growth from the first sample after a minute of warm-up (buffers and pools filled) to the end.
  awk -F'\t' '$1 >= 60 && !seen {c0 = $2; s0 = $3; seen = 1} {c = $2; s = $3}
    END {if (seen) printf "growth after warm-up: client %+.1f MiB, server %+.1f MiB\n", (c - c0)/1024, (s - s0)/1024}' "$SOAK_SERIES"
  awk '/Requests\/sec|Status code distribution|^ +\[[0-9]+\]/ {print "hey: " $0}' "$WORK/hey-soak.txt"
fi
