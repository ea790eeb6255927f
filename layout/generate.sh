#!/usr/bin/env bash
# Regenerates layout/symbol-order.txt: the functions a sidecar runs, recorded by valgrind's
# callgrind on a release `palisade proxy` pair, hottest first. `bash layout/generate.sh`.
#
# Two pairs run under callgrind one after the other, both on loopback with the same mesh as
# bench/run.sh: one taking its configuration and certificate from a real `palisade
# control-plane` (as in a cluster), one standalone (--static-config, as in
# bench/peers-palisade.sh). Each gets HTTP/1.1 (wrk), HTTP/2 to an http2 port and to an http
# port (h2load), a denied request and a metrics scrape, then SIGTERM and its drain. Rerun it
# after dependency or toolchain updates: names that no longer exist are skipped at link time,
# so a stale file costs memory, never correctness.
#
# Env: LAYOUT_DURATION=3 (s per load run, under callgrind about 400 req/s)  BENCH_KEEP=1
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${LAYOUT_DURATION:-3}
H1_PORT=18080
H2_PORT=18081

log() { printf '[layout %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
for tool in valgrind:valgrind wrk:wrk h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them or run as root"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_workdir layout
build_release

"$PALISADE" ca init --out "$WORK/ca" >/dev/null
for sa in client server; do
  "$PALISADE" ca issue --dir "$WORK/ca" --spiffe-id "spiffe://cluster.local/ns/bench/sa/$sa" \
    --cert "$WORK/$sa.crt" --key "$WORK/$sa.key" >/dev/null
  openssl rand -hex 32 >"$WORK/$sa.token"
done
printf 'bench/client %s\nbench/server %s\n' "$(cat "$WORK/client.token")" "$(cat "$WORK/server.token")" >"$WORK/tokens"

# profile_pair MODE NET: a client and a server sidecar under callgrind on 127.0.NET.1 and .2.
profile_pair() {
  local mode=$1 net=$2 client_ip=127.0.$2.1 server_ip=127.0.$2.2 source=() cp_ip=127.0.$2.250
  mkdir -p "$WORK/$mode"
  sed "s/127\.0\.2\./127.0.$net./g" "$ROOT/bench/mesh.yaml" >"$WORK/$mode/mesh.yaml"
  if [ "$mode" = control-plane ]; then
    start_bg "$mode-cp" "$PALISADE" control-plane --config "$WORK/$mode" --ca-dir "$WORK/ca" \
      --tokens "$WORK/tokens" --grpc-addr "$cp_ip:15012" --admin-addr "$cp_ip:15014"
    wait_http "http://$cp_ip:15014/ready" "$LAST_PID" "$mode-cp"
  fi
  start_bg "$mode-app-h1" "$SHOP" search --listen "$server_ip:$H1_PORT"
  wait_http "http://$server_ip:$H1_PORT/healthz" "$LAST_PID" "$mode-app-h1"
  start_bg "$mode-app-h2" "$SHOP" search --listen "$server_ip:$H2_PORT"
  wait_http "http://$server_ip:$H2_PORT/healthz" "$LAST_PID" "$mode-app-h2"
  local pids=()
  for side in server:"$server_ip" client:"$client_ip"; do
    local sa=${side%%:*} ip=${side#*:}
    if [ "$mode" = control-plane ]; then
      source=(--control-plane "$cp_ip:15012" --token-file "$WORK/$sa.token")
    else
      source=(--static-config "$WORK/$mode" --cert "$WORK/$sa.crt" --key "$WORK/$sa.key")
    fi
    start_bg "$mode-$sa" valgrind --tool=callgrind --demangle=no \
      --callgrind-out-file="$WORK/$mode-$sa.callgrind" \
      "$PALISADE" proxy --workload "$sa" --namespace bench --service-account "$sa" "${source[@]}" \
      --trust-anchors "$WORK/ca/root-cert.pem" --inbound "$ip:15006" --outbound "$ip:15001" \
      --admin "$ip:15000" --app-host "$ip" --worker-threads 1 --drain-seconds 1
    pids+=("$LAST_PID")
    wait_http "http://$ip:15000/ready" "$LAST_PID" "$mode-$sa"
  done
  log "$mode: load under callgrind"
  curl -fsS -o /dev/null -H "Host: server.bench:$H1_PORT" "http://$client_ip:15001/healthz" ||
    die "$mode: a request through the mesh failed"
  timeout -k 5 $((DUR + 60)) wrk -t1 -c8 -d"${DUR}s" -H "Host: server.bench:$H1_PORT" \
    "http://$client_ip:15001/healthz" >"$WORK/$mode-wrk.txt"
  timeout -k 5 $((DUR + 60)) h2load -c2 -m5 -D "$DUR" -H ":authority: server-h2.bench:$H2_PORT" \
    "http://$client_ip:15001/healthz" >"$WORK/$mode-h2-http2.txt"
  timeout -k 5 $((DUR + 60)) h2load -c2 -m5 -D "$DUR" -H ":authority: server.bench:$H1_PORT" \
    "http://$client_ip:15001/healthz" >"$WORK/$mode-h2-http1.txt"
  curl -s -o /dev/null -H "Host: server.bench:$H1_PORT" "http://$client_ip:15001/admin/x"
  curl -fsS -o /dev/null "http://$client_ip:15000/metrics"
  curl -fsS -o /dev/null "http://$server_ip:15000/metrics"
  log "$mode: $(awk '/^Requests\/sec:/ {print $2}' "$WORK/$mode-wrk.txt") req/s under callgrind; draining"
  for pid in "${pids[@]}"; do kill -TERM "$pid"; done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
}

profile_pair control-plane 4
profile_pair static 5
python3 "$ROOT/layout/callgrind-order.py" "$PALISADE" "$WORK"/*.callgrind >"$WORK/order.txt"
{
  echo "# Functions a sidecar runs, hottest first: lld's --symbol-ordering-file for release"
  echo "# builds of the palisade binary (build.rs). Made by layout/generate.sh; do not edit."
  echo "# made for: $(rustc -V); Cargo.lock fnv1a $(python3 -c '
import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) % 2**64
print("%016x" % h)' "$ROOT/Cargo.lock")"
  cat "$WORK/order.txt"
} >"$ROOT/layout/symbol-order.txt"
log "layout/symbol-order.txt: $(wc -l <"$WORK/order.txt") functions"
