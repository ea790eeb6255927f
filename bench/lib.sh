# Shared by bench/run.sh and bench/tap.sh (sourced after they define log, die and ROOT):
# a work dir removed on exit with every process started in it, start_bg, wait_http, and the
# release binaries.

# require_tools COMMAND:PACKAGE...: stops with the Debian package to install for each missing
# command.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} is missing (apt-get install ${tool#*:})"
  done
}

# prebuilt_or_release [BINARY]: build_release, then BIN is BINARY if given (a sidecar build to
# measure), else the release build.
prebuilt_or_release() {
  build_release
  BIN=${1:-$PALISADE}
  [ -x "$BIN" ] || die "$BIN is not an executable"
}

# cpu_ticks PID: utime + stime of a process in clock ticks (getconf CLK_TCK a second); 0 once
# it is gone.
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# peak_rss_mib PID [DECIMALS]: the process's peak resident set (VmHWM) in MiB, default one
# decimal; "?" once it is gone.
peak_rss_mib() {
  awk -v d="${2:-1}" '/^VmHWM:/ {printf "%.*f", d, $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# bench_workdir NAME: makes $WORK and stops every start_bg process (then removes $WORK,
# unless BENCH_KEEP is set) on exit.
bench_workdir() {
  PIDS=()
  WORK=$(mktemp -d "/tmp/palisade-$1.XXXXXX")
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ -n "${BENCH_KEEP:-}" ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}

start_bg() { # name cmd... ; sets LAST_PID
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

wait_http() { # url pid name
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { cat "$WORK/$3.log" >&2; die "$3 exited"; }
    sleep 0.1
  done
  cat "$WORK/$3.log" >&2; die "$3 not ready at $1"
}

# build_release: builds the binary and the shop app; sets PALISADE and SHOP. With
# BENCH_PALISADE and BENCH_SHOP set (prebuilt binaries, e.g. while another build runs), it
# uses those and builds nothing.
build_release() {
  if [ -n "${BENCH_PALISADE:-}" ] && [ -n "${BENCH_SHOP:-}" ]; then
    [ -x "$BENCH_PALISADE" ] || die "BENCH_PALISADE=$BENCH_PALISADE is not an executable"
    [ -x "$BENCH_SHOP" ] || die "BENCH_SHOP=$BENCH_SHOP is not an executable"
    PALISADE=$BENCH_PALISADE SHOP=$BENCH_SHOP
    log "prebuilt binaries: $PALISADE, $SHOP"
    return 0
  fi
  log "building release binaries"
  # Two invocations: the example pulls in dev-dependency features, and building it together
  # with the binary would give the binary a feature set other release builds do not share.
  (cd "$ROOT" && cargo build --release -q --bin palisade && cargo build --release -q --example shop_app)
  local target
  target=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  PALISADE=$target/release/palisade
  SHOP=$target/release/examples/shop_app
}

# standalone_setup NET [PORT...]: a throwaway CA with client and server leaves, the mesh of
# bench/mesh.yaml moved to 127.0.NET.x, and the shop app on the server's address at each PORT
# (default 18080 and 18081); sets CLIENT_IP and SERVER_IP. For the standalone pairs of
# bench/ab.sh, profile.sh and rss.sh.
standalone_setup() {
  local net=$1 port ports=("${@:2}")
  [ ${#ports[@]} -gt 0 ] || ports=(18080 18081)
  CLIENT_IP=127.0.$net.1 SERVER_IP=127.0.$net.2
  "$PALISADE" ca init --out "$WORK/ca" >/dev/null
  for sa in client server; do
    "$PALISADE" ca issue --dir "$WORK/ca" --spiffe-id "spiffe://cluster.local/ns/bench/sa/$sa" \
      --cert "$WORK/$sa.crt" --key "$WORK/$sa.key" >/dev/null
  done
  mkdir -p "$WORK/mesh"
  sed "s/127\.0\.2\./127.0.$net./g" "$ROOT/bench/mesh.yaml" >"$WORK/mesh/mesh.yaml"
  for port in "${ports[@]}"; do
    start_bg "app-$port" "$SHOP" search --listen "$SERVER_IP:$port"
    wait_http "http://$SERVER_IP:$port/healthz" "$LAST_PID" "app-$port"
  done
}

# start_standalone_pair BINARY [LABEL]: a server and a client sidecar of BINARY on the
# addresses of standalone_setup (one worker thread each); sets PAIR_PIDS (server, client).
start_standalone_pair() {
  local bin=$1 label=${2:-pair} side sa ip
  PAIR_PIDS=()
  for side in server:$SERVER_IP client:$CLIENT_IP; do
    sa=${side%%:*} ip=${side#*:}
    start_bg "$label-$sa" "$bin" proxy --workload "$sa" --namespace bench --service-account "$sa" \
      --static-config "$WORK/mesh" --trust-anchors "$WORK/ca/root-cert.pem" \
      --cert "$WORK/$sa.crt" --key "$WORK/$sa.key" --inbound "$ip:15006" --outbound "$ip:15001" \
      --admin "$ip:15000" --app-host "$ip" --worker-threads 1
    PAIR_PIDS+=("$LAST_PID")
    wait_http "http://$ip:15000/ready" "$LAST_PID" "$label-$sa"
  done
}
