#!/usr/bin/env bash
# Transparent-capture benchmark, one command (root): `bash bench/capture.sh`.
#
# Builds the release binaries, then in one run over the same veth path between two pod
# network namespaces on a node bridge (the topology of tests/support/netns.rs) measures:
#   direct   : client pod -> server app (no rules, no sidecars yet)
#   captured : after `palisade init` in both pods and both sidecars up (UID 1337), the same
#              unmodified client dials the server pod's address: client outbound capture ->
#              client sidecar -> mTLS to the server sidecar's 15006 (sidecars dial it
#              directly; the inbound rules leave 15006 alone and capture only callers that
#              dial the app's port) -> app
#   explicit : the client sends to its sidecar's 127.0.0.1:15001 with `Host: server.bench:8080`
#              (same server side)
# with wrk (HTTP/1.1 keep-alive) for requests/s and p50/p99, and a paced wrk run (about 1k
# req/s from 10 connections with a 10 ms think time) for the latency the mesh adds. Then the
# server-speaks-first figure: time from connect() to the first banner byte, direct, through
# the mesh on a port declared `tcp`, and on a port declared `http` (the detection control).
#
# Sidecars: a control plane in the node namespace issues their certificates and pushes
# bench/capture-mesh.yaml; one data-plane worker thread each; full L7 authorization on every
# request. Everything lives in namespaces named pal-b<pid>-<n> (node, client, server) and a
# temporary directory; the exit trap (also on Ctrl-C and errors) kills every process this
# script started, by PID, and deletes the namespaces. Nothing is made in the root namespace
# and no packet leaves the namespaces (the node has no uplink).
#
# The load runs are repeated BENCH_ROUNDS times (captured and explicit interleaved, their
# order alternating) and the table shows medians: this machine is shared and noisy, so
# compare ratios within one run, not absolute figures across runs.
#
# Env: BENCH_DURATION=8 (s per load run)  BENCH_CONNECTIONS=16  BENCH_ROUNDS=3
#      BENCH_BANNER_COUNT=200  BENCH_DETECT_MS=1000 (sidecars' --detect-timeout-ms)
#      BENCH_KEEP=1 (keep the work dir with every log)
#      BENCH_PALISADE, BENCH_SHOP (prebuilt binary and shop app: no build; see bench/lib.sh)
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${BENCH_DURATION:-8}
CONNS=${BENCH_CONNECTIONS:-16}
ROUNDS=${BENCH_ROUNDS:-3}
BANNER_COUNT=${BENCH_BANNER_COUNT:-200}
DETECT_MS=${BENCH_DETECT_MS:-1000}
# Connections on the http-declared banner port each wait out the detection timeout.
HTTP_BANNER_COUNT=5
GATEWAY=10.77.1.1
CLIENT_IP=10.77.1.2
SERVER_IP=10.77.1.3
APP_PORT=8080
BANNER_TCP_PORT=7001
BANNER_HTTP_PORT=7002
SERVICE_AUTHORITY=server.bench:$APP_PORT
NS_PREFIX=pal-b$$
NODE=$NS_PREFIX-0
CLIENT=$NS_PREFIX-1
SERVER=$NS_PREFIX-2

log() { printf '[capture %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# For build_release only; sourced first, so that this script's own start_bg (in a network
# namespace) and cleanup take precedence.
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for var in BENCH_DURATION:$DUR BENCH_CONNECTIONS:$CONNS BENCH_ROUNDS:$ROUNDS \
  BENCH_BANNER_COUNT:$BANNER_COUNT BENCH_DETECT_MS:$DETECT_MS; do
  [[ ${var#*:} =~ ^[1-9][0-9]*$ ]] || die "${var%%:*} must be a positive integer, not \"${var#*:}\""
done
# Hard upper bound on every background process, should this script be killed without its
# trap running.
LIFETIME=$((DUR * ROUNDS * 6 + DETECT_MS * HTTP_BANNER_COUNT / 1000 + 600))

# --- prerequisites ----------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, iptables, setpriv)"
for tool in ip iptables-nft iptables-nft-restore setpriv python3 curl timeout; do
  command -v "$tool" >/dev/null || die "missing $tool (Debian: iproute2, iptables, util-linux, python3, curl, coreutils)"
done
if ! command -v wrk >/dev/null; then
  log "installing wrk from Debian"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
ip netns list >/dev/null || die "ip netns does not work here"

# --- cleanup ----------------------------------------------------------------------------------
PIDS=()        # every background process, in start order, as PID:START (see started_at)
NAMESPACES=()  # every namespace made, node first
WORK=$(mktemp -d /tmp/palisade-capture-bench.XXXXXX)
# The start time of PID (clock ticks since boot, /proc/PID/stat field 22), empty if gone.
started_at() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }
ours() { [ "$(started_at "${1%%:*}")" = "${1#*:}" ]; } # PID:START still alive and the same
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i entry
  # Only a PID still naming the process it named at start (never a reused one).
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    ours "${PIDS[i]}" && kill "${PIDS[i]%%:*}" 2>/dev/null || true
  done
  for entry in "${PIDS[@]}"; do
    for _ in $(seq 50); do ours "$entry" || break; sleep 0.1; done
    ours "$entry" && kill -9 "${entry%%:*}" 2>/dev/null || true
  done
  for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
    timeout 10 ip netns del "${NAMESPACES[i]}" 2>/dev/null || log "could not delete namespace ${NAMESPACES[i]}"
  done
  # Logs are kept after a failure (not after an interrupt), to be read.
  if [ -n "${BENCH_KEEP:-}" ] || { [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ]; }; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# Namespaces of this shape left by a run that was killed outright (its pid is gone).
for ns in $(ip netns list | awk '{print $1}'); do
  if [[ $ns =~ ^pal-b([0-9]+)-[0-9]+$ ]] && [ ! -d "/proc/${BASH_REMATCH[1]}" ]; then
    log "removing stale namespace $ns"
    timeout 10 ip netns del "$ns" || true
  fi
done

# --- helpers ----------------------------------------------------------------------------------
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# start_bg NAME NS CMD... : background process inside NS, logging to $WORK/NAME.log, bounded
# by LIFETIME; sets LAST_PID to the process itself (`ip netns exec` and `setpriv` exec).
start_bg() {
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" timeout -k 5 "$LIFETIME" "$@" >"$WORK/$name.log" 2>&1 &
  local wrapper=$! child=""
  PIDS+=("$wrapper:$(started_at "$wrapper")")
  for _ in $(seq 50); do
    child=$( (ps -o pid= --ppid "$wrapper" || true) | awk 'NR==1 {print $1}')
    [ -n "$child" ] && break
    kill -0 "$wrapper" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$child" ] || { tail -n 20 "$WORK/$name.log" >&2; die "$name exited at start (log above)"; }
  PIDS+=("$child:$(started_at "$child")")
  LAST_PID=$child
}

# wait_ready NS URL PID NAME : polls URL from inside NS until it answers 2xx (bounded).
wait_ready() {
  local ns=$1 url=$2 pid=$3 name=$4
  for _ in $(seq 400); do
    in_ns "$ns" curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$WORK/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  tail -n 30 "$WORK/$name.log" >&2
  die "$name not ready at $url (inside $ns) within 40 s"
}

# fail_with_logs MESSAGE : dies after showing the tail of every sidecar and control-plane log.
fail_with_logs() {
  local f
  for f in "$WORK"/control-plane.log "$WORK"/sidecar-*.log; do
    [ -f "$f" ] && { echo "--- $(basename "$f")" >&2; tail -n 20 "$f" >&2; }
  done
  die "$1"
}

to_us() { # wrk latency text (e.g. 312.00us, 1.23ms, 2.01s) -> microseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.0f", v }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.0f", v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.0f", v * 1000000 }
    else printf "nan" }'
}

# run_wrk LABEL KIND(load|paced) URL [HOST] : wrk inside the client pod (as root, so its
# connections are captured once the rules are in); appends "LABEL KIND rps p50us p99us errors"
# for round $ROUND.
RESULTS=$WORK/results.txt
: >"$RESULTS"
# cpu_stat: "steal total" jiffies of the machine, from the cpu line of /proc/stat.
cpu_stat() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
declare -A SIDECAR=() # workload -> sidecar PID, once started
run_wrk() {
  local label=$1 kind=$2 url=$3 host=${4:-} out="$WORK/wrk-$1-$2-r$ROUND.txt" args=() rc=0
  [ -n "$host" ] && args+=(-H "Host: $host")
  if [ "$kind" = paced ]; then args+=(-c10 -s "$WORK/pace.lua"); else args+=(-c"$CONNS"); fi
  # Sidecar CPU per request and the hypervisor's steal: a captured/explicit difference in
  # req/s with the same CPU per request is the machine, not the path.
  local w ticks_before=() ticks_after=() stat_before stat_after
  for w in client server; do ticks_before+=("$(cpu_ticks "${SIDECAR[$w]:-0}")"); done
  stat_before=$(cpu_stat)
  timeout --foreground -k 5 $((DUR + 30)) \
    ip netns exec "$CLIENT" wrk -t1 -d"${DUR}s" --latency "${args[@]}" "$url" >"$out" 2>&1 || rc=$?
  stat_after=$(cpu_stat)
  for w in client server; do ticks_after+=("$(cpu_ticks "${SIDECAR[$w]:-0}")"); done
  [ "$rc" -eq 0 ] || { cat "$out" >&2; fail_with_logs "wrk $label $kind exited $rc"; }
  local rps p50 p99 errors requests
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  p50=$(to_us "$(awk '$1=="50%" {print $2}' "$out")")
  p99=$(to_us "$(awk '$1=="99%" {print $2}' "$out")")
  requests=$(awk '/requests in/ {print $1; exit}' "$out")
  errors=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
  [ -n "$rps" ] && [ "${requests:-0}" -gt 0 ] || { cat "$out" >&2; fail_with_logs "wrk $label $kind made no requests"; }
  local us_client us_server steal
  us_client=$(awk -v a="${ticks_before[0]}" -v b="${ticks_after[0]}" -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')
  us_server=$(awk -v a="${ticks_before[1]}" -v b="${ticks_after[1]}" -v n="$requests" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')
  steal=$(awk -v a="$stat_before" -v b="$stat_after" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.1f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }')
  printf '%s %s %s %s %s %s %s %s %s\n' "$label" "$kind" "$rps" "$p50" "$p99" "$errors" "$us_client" "$us_server" "$steal" >>"$RESULTS"
  local cpu_text=""
  [ "$label" = direct ] || cpu_text="; sidecar CPU per request ${us_client} / ${us_server} us (client / server)"
  log "round $ROUND $label $kind: $rps req/s, p50 ${p50}us, p99 ${p99}us, $errors errors ($requests requests)$cpu_text; steal ${steal}%"
  [ "$errors" -eq 0 ] || log "WARNING: $label $kind had $errors failed requests; see $out"
}
result() { # LABEL KIND FIELD(3 rps, 4 p50, 5 p99, 6 errors, 7/8 client/server sidecar CPU us per request, 9 steal %) -> median over rounds (errors: sum)
  awk -v l="$1" -v k="$2" -v f="$3" '$1==l && $2==k {print $f}' "$RESULTS" | sort -g |
    awk -v f="$3" '{a[NR] = $1; s += $1} END { if (f == 6) print s + 0; else print a[int((NR + 1) / 2)] }'
}

# probe_banner LABEL PORT COUNT : sequential connections from the client pod to the server's
# banner port; appends the probe's summary line to $WORK/banner-LABEL.txt.
probe_banner() {
  local label=$1 port=$2 count=$3 out="$WORK/banner-$1.txt"
  local bound=$((count * 6 + 30))
  timeout --foreground -k 5 "$bound" \
    ip netns exec "$CLIENT" python3 "$WORK/banner.py" probe "$SERVER_IP" "$port" "$count" >"$out" 2>&1 \
    || { cat "$out" >&2; fail_with_logs "banner probe $label failed"; }
  log "banner $label: $(cat "$out")"
}
banner_field() { # LABEL KEY -> value or "-"
  tr ' ' '\n' <"$WORK/banner-$1.txt" | awk -F= -v k="$2" '$1==k {v=$2} END {print (v == "" ? "-" : v)}'
}


metric_sum() { # NS PATTERN : sum of the sidecar's metric lines matching PATTERN
  in_ns "$1" curl -fsS --max-time 5 http://127.0.0.1:15000/metrics 2>/dev/null |
    awk -v p="$2" '$0 !~ /^#/ && $0 ~ p {n += $NF} END {print n + 0}'
}

# --- build ------------------------------------------------------------------------------------
build_release
# UID 1337 runs the sidecar from a copy in the work dir, whatever the target dir's modes.
cp "$PALISADE" "$WORK/palisade"
PALISADE=$WORK/palisade
cp "$ROOT/bench/capture-banner.py" "$WORK/banner.py"
printf 'function delay()\n  return 10\nend\n' >"$WORK/pace.lua"

# --- PKI, mesh config, tokens (all readable where UID 1337 needs them) -----------------------
chmod 755 "$WORK"
"$PALISADE" ca init --out "$WORK/ca" >/dev/null
chmod 755 "$WORK/ca"
chmod 644 "$WORK/ca/root-cert.pem"
mkdir "$WORK/config"
cp "$ROOT/bench/capture-mesh.yaml" "$WORK/config/mesh.yaml"
token() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
CLIENT_TOKEN=$(token)
SERVER_TOKEN=$(token)
printf 'bench/client %s\nbench/server %s\n' "$CLIENT_TOKEN" "$SERVER_TOKEN" >"$WORK/tokens"
chmod 600 "$WORK/tokens"
for w in client server; do
  tok=CLIENT_TOKEN; [ "$w" = server ] && tok=SERVER_TOKEN
  printf '%s\n' "${!tok}" >"$WORK/$w.token"
  chown 1337:1337 "$WORK/$w.token"
  chmod 600 "$WORK/$w.token"
done

# --- namespaces: node with bridge, two pods on it ---------------------------------------------
log "creating namespaces $NODE (node), $CLIENT (client $CLIENT_IP), $SERVER (server $SERVER_IP)"
NAMESPACES+=("$NODE"); ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip -n "$NODE" link add pal-br0 type bridge
ip -n "$NODE" addr add "$GATEWAY/24" dev pal-br0
ip -n "$NODE" link set pal-br0 up
n=0
for pod in "$CLIENT:$CLIENT_IP" "$SERVER:$SERVER_IP"; do
  ns=${pod%%:*} addr=${pod##*:} n=$((n + 1))
  NAMESPACES+=("$ns"); ip netns add "$ns"
  ip -n "$ns" link set lo up
  # Made inside the node namespace with the peer moved straight into the pod.
  ip -n "$NODE" link add "vb$$-$n" type veth peer name eth0 netns "$ns"
  ip -n "$NODE" link set "vb$$-$n" master pal-br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$GATEWAY"
done

# --- apps in the server pod, on its address ---------------------------------------------------
start_bg app "$SERVER" "$SHOP" search --listen "$SERVER_IP:$APP_PORT"; APP=$LAST_PID
start_bg banner "$SERVER" python3 "$WORK/banner.py" serve "$SERVER_IP" "$BANNER_TCP_PORT" "$BANNER_HTTP_PORT"
BANNER=$LAST_PID
wait_ready "$CLIENT" "http://$SERVER_IP:$APP_PORT/healthz" "$APP" app
for _ in $(seq 100); do
  in_ns "$CLIENT" python3 -c "import socket; socket.create_connection(('$SERVER_IP', $BANNER_TCP_PORT), 1).recv(1)" 2>/dev/null && break
  kill -0 "$BANNER" 2>/dev/null || { cat "$WORK/banner.log" >&2; die "banner server exited"; }
  sleep 0.1
done

# --- 1. direct --------------------------------------------------------------------------------
URL=http://$SERVER_IP:$APP_PORT/healthz
log "direct: $ROUNDS rounds of ${DUR}s wrk ($CONNS connections) and ${DUR}s paced"
for ROUND in $(seq "$ROUNDS"); do
  run_wrk direct load "$URL"
  run_wrk direct paced "$URL"
done
probe_banner direct "$BANNER_TCP_PORT" "$BANNER_COUNT"

# --- mesh: control plane, capture rules, sidecars ---------------------------------------------
log "starting the control plane in $NODE"
start_bg control-plane "$NODE" "$PALISADE" control-plane --config "$WORK/config" --ca-dir "$WORK/ca" \
  --tokens "$WORK/tokens" --grpc-addr "$GATEWAY:15012" --admin-addr "$GATEWAY:15014"
CP=$LAST_PID
wait_ready "$NODE" "http://$GATEWAY:15014/ready" "$CP" control-plane

for w in client server; do
  ns=$CLIENT addr=$CLIENT_IP
  [ "$w" = server ] && ns=$SERVER addr=$SERVER_IP
  in_ns "$ns" timeout 30 "$PALISADE" init --dns-servers "$GATEWAY" >"$WORK/init-$w.log" 2>&1 \
    || { cat "$WORK/init-$w.log" >&2; die "palisade init failed in the $w pod"; }
  start_bg "sidecar-$w" "$ns" setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$PALISADE" proxy --workload "$w" --namespace bench --service-account "$w" \
    --control-plane "$GATEWAY:15012" --trust-anchors "$WORK/ca/root-cert.pem" \
    --token-file "$WORK/$w.token" --inbound 0.0.0.0:15006 --outbound 127.0.0.1:15001 \
    --admin 127.0.0.1:15000 --app-host "$addr" --worker-threads 1 --drain-seconds 1 \
    --detect-timeout-ms "$DETECT_MS"
  SIDECAR[$w]=$LAST_PID
done
for w in client server; do
  ns=$CLIENT; [ "$w" = server ] && ns=$SERVER
  wait_ready "$ns" http://127.0.0.1:15000/ready "${SIDECAR[$w]}" "sidecar-$w"
done
for w in client server; do
  [ "$(awk '/^Uid:/ {print $2}' "/proc/${SIDECAR[$w]}/status")" = 1337 ] || die "the $w sidecar is not running as UID 1337"
done

# Both paths answer 200 before any load (the configuration push may trail readiness).
check_path() { # LABEL URL [HOST]
  local code="" hdr=()
  [ -n "${3:-}" ] && hdr=(-H "Host: $3")
  for _ in $(seq 100); do
    code=$(in_ns "$CLIENT" curl -sS --max-time 2 -o "$WORK/check-$1.txt" -w '%{http_code}' "${hdr[@]}" "$2" 2>&1) || true
    [ "$code" = 200 ] && return 0
    sleep 0.2
  done
  cat "$WORK/check-$1.txt" >&2 2>/dev/null || true
  fail_with_logs "the $1 path does not answer 200 (last: $code)"
}
check_path captured "$URL"
check_path explicit "http://127.0.0.1:15001/healthz" "$SERVICE_AUTHORITY"
# A request the DENY policy refuses proves the inbound sidecar evaluates L7 policy.
denied=$(in_ns "$CLIENT" curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://$SERVER_IP:$APP_PORT/admin") || true
[ "$denied" = 403 ] || log "WARNING: GET /admin through the mesh answered $denied, expected 403 (L7 policy)"

# --- 2. captured, 3. explicit -----------------------------------------------------------------
CAPTURED_CONNS=0 EXPLICIT_CONNS=0
counters() { # -> "client-outbound-captured server-inbound-accepted"
  echo "$(metric_sum "$CLIENT" 'captured_connections_total.*outbound') $(metric_sum "$SERVER" '^palisade_proxy_connections_total.*inbound')"
}
run_captured() {
  local before after
  read -r -a before <<<"$(counters)"
  run_wrk captured load "$URL"
  run_wrk captured paced "$URL"
  read -r -a after <<<"$(counters)"
  CAPTURED_CONNS=$((CAPTURED_CONNS + after[0] - before[0]))
}
run_explicit() {
  local before after
  read -r -a before <<<"$(counters)"
  run_wrk explicit load "http://127.0.0.1:15001/healthz" "$SERVICE_AUTHORITY"
  run_wrk explicit paced "http://127.0.0.1:15001/healthz" "$SERVICE_AUTHORITY"
  read -r -a after <<<"$(counters)"
  EXPLICIT_CONNS=$((EXPLICIT_CONNS + after[0] - before[0]))
}
log "captured: the client dials $SERVER_IP:$APP_PORT; explicit: it sends to 127.0.0.1:15001 with Host: $SERVICE_AUTHORITY"
REFUSED_BEFORE=$(metric_sum "$CLIENT" 'captured_refused_total')
for ROUND in $(seq "$ROUNDS"); do
  if ((ROUND % 2)); then run_captured; run_explicit; else run_explicit; run_captured; fi
done
REFUSED_LOAD=$(($(metric_sum "$CLIENT" 'captured_refused_total') - REFUSED_BEFORE))

# --- 4. server speaks first -------------------------------------------------------------------
log "banner through the mesh: port $BANNER_TCP_PORT (declared tcp), $BANNER_COUNT connections"
probe_banner mesh-tcp "$BANNER_TCP_PORT" "$BANNER_COUNT"
log "banner through the mesh: port $BANNER_HTTP_PORT (declared http), $HTTP_BANNER_COUNT connections"
probe_banner mesh-http "$BANNER_HTTP_PORT" "$HTTP_BANNER_COUNT"

for entry in "${PIDS[@]}"; do
  ours "$entry" || fail_with_logs "a benchmark process (pid ${entry%%:*}) exited during the run"
done
SERVER_CAPTURED=$(metric_sum "$SERVER" 'captured_connections_total.*inbound')
SERVER_ACCEPTED=$(metric_sum "$SERVER" '^palisade_proxy_connections_total.*inbound')
RSS_CLIENT="$(peak_rss_mib "${SIDECAR[client]}") MiB"
RSS_SERVER="$(peak_rss_mib "${SIDECAR[server]}") MiB"

# --- report -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+d", a - b }'; }
D_RPS=$(result direct load 3); D_PP50=$(result direct paced 4); D_PP99=$(result direct paced 5)
C_RPS=$(result captured load 3); E_RPS=$(result explicit load 3)

echo
echo "Palisade transparent-capture benchmark ($(date -u +%FT%TZ), $(nproc) cores)"
echo "client pod $CLIENT_IP -> node bridge -> server pod $SERVER_IP (veth); sidecars: 1 worker thread each, UID 1337,"
echo "full L7 authorization (default deny + ALLOW principal/port/method/path + DENY /admin*)"
echo "load: wrk -t1 -c$CONNS -d${DUR}s (HTTP/1.1 keep-alive) GET /healthz; paced: wrk -t1 -c10, 10 ms think time"
echo "medians of $ROUNDS rounds (direct first, then captured and explicit interleaved); latencies in µs;"
echo "paced+p50/+p99: paced latency added over direct; errors: failed requests over all rounds;"
echo "cpu out/in: µs of CPU (user + system) per request of the client/server sidecar under load;"
echo "steal%: the hypervisor's steal over the whole machine during the load run"
echo
printf '%-9s %8s %7s %7s %8s %8s %9s %9s %9s %7s %9s %9s %7s\n' \
  path req/s p50 p99 "paced50" "paced99" "paced+p50" "paced+p99" "vs direct" errors "cpu out" "cpu in" "steal%"
for l in direct captured explicit; do
  rps=$(result "$l" load 3)
  pp50=$(result "$l" paced 4); pp99=$(result "$l" paced 5)
  if [ "$l" = direct ]; then a50=0; a99=0; vs=1.00; else
    a50=$(added "$pp50" "$D_PP50"); a99=$(added "$pp99" "$D_PP99"); vs=x$(ratio "$rps" "$D_RPS"); fi
  errs=$(( $(result "$l" load 6) + $(result "$l" paced 6) ))
  cpu_out=-; cpu_in=-
  [ "$l" = direct ] || { cpu_out=$(result "$l" load 7); cpu_in=$(result "$l" load 8); }
  printf '%-9s %8s %7s %7s %8s %8s %9s %9s %9s %7s %9s %9s %7s\n' \
    "$l" "$rps" "$(result "$l" load 4)" "$(result "$l" load 5)" "$pp50" "$pp99" "$a50" "$a99" "$vs" "$errs" \
    "$cpu_out" "$cpu_in" "$(result "$l" load 9)"
done
echo
echo "captured/explicit req/s = $(ratio "$C_RPS" "$E_RPS") (target: at least 0.90)"
echo "client sidecar, outbound connections captured: $CAPTURED_CONNS during the captured runs, $EXPLICIT_CONNS during the explicit runs;"
echo "  refused during them: $REFUSED_LOAD (wrk opens and closes one connection without a byte before each run:"
echo "  on the captured path that connection reaches the sidecar, shows no HTTP, and is refused)"
echo "server sidecar: $SERVER_ACCEPTED mTLS connections accepted on 15006 (peer sidecars dial it; the rules leave 15006"
echo "  uncaptured), $SERVER_CAPTURED plaintext connections captured inbound"
echo
describe_banner() { # LABEL
  local got closed to
  got=$(banner_field "$1" banner); closed=$(banner_field "$1" closed); to=$(banner_field "$1" timeouts)
  printf 'banner %s/%s' "$got" "$(banner_field "$1" count)"
  [ "$got" != 0 ] && printf ', to first byte p50 %s us, p99 %s us, max %s us' \
    "$(banner_field "$1" banner_p50_us)" "$(banner_field "$1" banner_p99_us)" "$(banner_field "$1" banner_max_us)"
  [ "$closed" != 0 ] && printf '; closed with no byte %s/%s, after p50 %s us, max %s us' \
    "$closed" "$(banner_field "$1" count)" "$(banner_field "$1" closed_p50_us)" "$(banner_field "$1" closed_max_us)"
  [ "$to" != 0 ] && printf '; %s timed out (5 s)' "$to"
  [ "$(banner_field "$1" errors)" != - ] && printf '; errors %s' "$(banner_field "$1" errors)"
  echo
}
echo "server speaks first (connect() to the first banner byte, sequential connections from the client pod):"
printf '  %-26s ' "direct:"; describe_banner direct
printf '  %-26s ' "mesh, port declared tcp:"; describe_banner mesh-tcp
printf '  %-26s ' "mesh, port declared http:"; describe_banner mesh-http
echo "  (detection timeout: ${DETECT_MS} ms; on a port declared http the client sidecar waits for the app's first"
echo "   bytes, and a connection that shows no HTTP by then is refused: closed before any byte reaches the server)"
echo
echo "peak RSS (VmHWM): client sidecar $RSS_CLIENT, server sidecar $RSS_SERVER"
