#!/usr/bin/env bash
# What watching costs: throughput and latency through the sidecar pair with `palisade tap`
# streaming every decision, and without. `bash bench/tap.sh`.
#
# Unlike bench/run.sh the sidecars here take their configuration and certificates from a real
# `palisade control-plane` (the live view needs one), all on loopback 127.0.3.x, one worker
# thread each. Rounds alternate "idle" (nobody watching: sidecars keep only their denial ring)
# and "tapped" (`palisade tap` connected, printing every decision to /dev/null: sidecars
# sample 1 in 16 allowed requests, count every caller's requests and latency, and report every
# 500 ms). Prints req/s, p50 and p99 for wrk (HTTP/1.1) and h2load (HTTP/2) per round, the
# medians, and tapped / idle.
#
# Env: BENCH_DURATION=8 (s per run)  BENCH_CONNECTIONS=16  BENCH_STREAMS=10  BENCH_ROUNDS=3
#      BENCH_KEEP=1 (keep the work dir)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${BENCH_DURATION:-8}
CONNS=${BENCH_CONNECTIONS:-16}
STREAMS=${BENCH_STREAMS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CP_IP=127.0.3.250
CLIENT_IP=127.0.3.1
SERVER_IP=127.0.3.2
H1_PORT=18080
H2_PORT=18081

log() { printf '[bench-tap %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them or run as root"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir bench-tap
build_release

# --- control plane, mesh, tokens -------------------------------------------------------------
"$PALISADE" ca init --out "$WORK/ca" >/dev/null
mkdir -p "$WORK/mesh"
sed "s/127\.0\.2\./127.0.3./g" "$ROOT/bench/mesh.yaml" >"$WORK/mesh/mesh.yaml"
CLIENT_TOKEN=$(openssl rand -hex 32)
SERVER_TOKEN=$(openssl rand -hex 32)
printf 'bench/client %s\nbench/server %s\n' "$CLIENT_TOKEN" "$SERVER_TOKEN" >"$WORK/tokens"
printf '%s\n' "$CLIENT_TOKEN" >"$WORK/client.token"
printf '%s\n' "$SERVER_TOKEN" >"$WORK/server.token"
start_bg control-plane "$PALISADE" control-plane --config "$WORK/mesh" --ca-dir "$WORK/ca" \
  --tokens "$WORK/tokens" --grpc-addr "$CP_IP:15012" --admin-addr "$CP_IP:15014"; CP=$LAST_PID
wait_http "http://$CP_IP:15014/ready" "$CP" control-plane

start_bg app-h1 "$SHOP" search --listen "$SERVER_IP:$H1_PORT"; APP1=$LAST_PID
start_bg app-h2 "$SHOP" search --listen "$SERVER_IP:$H2_PORT"; APP2=$LAST_PID
proxy() { # name ip
  start_bg "$1" "$PALISADE" proxy --workload "$1" --namespace bench --service-account "$1" \
    --control-plane "$CP_IP:15012" --trust-anchors "$WORK/ca/root-cert.pem" \
    --token-file "$WORK/$1.token" --inbound "$2:15006" --outbound "$2:15001" \
    --admin "$2:15000" --app-host "$2" --worker-threads 1
}
proxy server "$SERVER_IP"; SERVER_PROXY=$LAST_PID
proxy client "$CLIENT_IP"; CLIENT_PROXY=$LAST_PID
wait_http "http://$SERVER_IP:$H1_PORT/healthz" "$APP1" app-h1
wait_http "http://$SERVER_IP:$H2_PORT/healthz" "$APP2" app-h2
wait_http "http://$SERVER_IP:15000/ready" "$SERVER_PROXY" server
wait_http "http://$CLIENT_IP:15000/ready" "$CLIENT_PROXY" client
curl -fsS -o /dev/null -H "Host: server.bench:$H1_PORT" "http://$CLIENT_IP:15001/healthz" \
  || die "a request through the mesh failed"

# --- rounds -----------------------------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
run_wrk() { # label
  local out="$WORK/wrk-$1.txt"
  timeout -k 5 $((DUR + 30)) wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -H "Host: server.bench:$H1_PORT" \
    "http://$CLIENT_IP:15001/healthz" >"$out"
  printf '%s\thttp1\t%s\t%s\t%s\n' "$1" "$(awk '/^Requests\/sec:/ {print $2}' "$out")" \
    "$(awk '$1=="50%" {print $2}' "$out")" "$(awk '$1=="99%" {print $2}' "$out")" >>"$RESULTS"
  grep -qE 'Non-2xx|Socket errors' "$out" && die "wrk saw errors: $(cat "$out")"
  return 0
}
run_h2load() { # label
  local out="$WORK/h2load-$1.txt"
  timeout -k 5 $((DUR + 30)) h2load -c"$CONNS" -m"$STREAMS" -D "$DUR" \
    -H ":authority: server-h2.bench:$H2_PORT" "http://$CLIENT_IP:15001/healthz" >"$out"
  printf '%s\thttp2\t%s\t-\t-\n' "$1" "$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$out")" >>"$RESULTS"
}
for round in $(seq "$ROUNDS"); do
  log "round $round/$ROUNDS: idle"
  run_wrk idle; run_h2load idle
  log "round $round/$ROUNDS: tapped"
  "$PALISADE" tap --control-plane "$CP_IP:15014" --output json >"$WORK/tap-$round.jsonl" 2>"$WORK/tap-$round.log" &
  TAP=$!
  PIDS+=("$TAP")
  sleep 1.5 # the control plane tells the sidecars; their next report follows
  run_wrk tapped; run_h2load tapped
  kill "$TAP" 2>/dev/null || true
  wait "$TAP" 2>/dev/null || true
  lines=$(wc -l <"$WORK/tap-$round.jsonl")
  [ "$lines" -gt 0 ] || die "the tap printed nothing in round $round: $(cat "$WORK/tap-$round.log")"
  log "round $round: tap printed $lines decisions"
  sleep 1
done

# --- report -----------------------------------------------------------------------------------
echo
echo "Palisade tap benchmark ($(date -u +%FT%TZ), $(nproc) cores, sidecars with 1 worker thread, control plane mode)"
echo "wrk: HTTP/1.1 keep-alive, $CONNS connections; h2load: HTTP/2, $CONNS connections x $STREAMS streams; ${DUR}s each; $ROUNDS rounds alternating"
echo
printf '%-8s %-6s %12s %10s %10s\n' "tap" "proto" "req/s" "p50" "p99"
while IFS=$'\t' read -r label proto rps p50 p99; do
  printf '%-8s %-6s %12s %10s %10s\n' "$label" "$proto" "$rps" "$p50" "$p99"
done <"$RESULTS"
echo
python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
for proto in ("http1", "http2"):
    med = {}
    for label in ("idle", "tapped"):
        med[label] = statistics.median(float(r[2]) for r in rows if r[0] == label and r[1] == proto)
    print(f"{proto}: median idle {med['idle']:.0f} req/s, tapped {med['tapped']:.0f} req/s, "
          f"tapped/idle {med['tapped'] / med['idle']:.3f}")
EOF
