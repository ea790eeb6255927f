# The floor of an mTLS sidecar pair as one more row of ../shared/bench/peers.sh (sourced
# through PEERS_EXTRA): what a pair that does nothing but the mTLS hop reaches here.
#
#   PEERS_EXTRA="bench/peers-palisade.sh bench/peers-floor.sh" \
#   PEERS_CONFIGS="direct nginx_pair haproxy_pair palisade_pair floor_pair" \
#   bash ../shared/bench/peers.sh
#
# floor_pair is proxy/examples/mtls_floor.rs twice: the outbound takes plain TCP and opens
# one mTLS connection (TLS 1.3, Palisade's SPIFFE verification both ways) to the inbound per
# client connection; the inbound opens one plain connection to the upstream's HTTP/1.1 port.
# Bytes are copied; no HTTP is parsed, nothing is authorized, pooled or counted. One
# current-thread runtime per process, as `palisade proxy --worker-threads 1`.
#
# Every HTTP-aware pair puts at least the same TCP segments and TLS records on the same
# processes, so the floor's wrk and paced rows bound what any of them can reach on this
# machine (its vCPU column bounds theirs from below). No h2load row: copied bytes would reach
# the upstream's h2c port, not the HTTP/1.1 one the other pairs translate to.

FLOOR_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log "building the mTLS floor (proxy/examples/mtls_floor.rs, release) in $FLOOR_ROOT"
(cd "$FLOOR_ROOT" && cargo build --release -q -p palisade-proxy --example mtls_floor) ||
  die "cargo build of mtls_floor failed"
FLOOR_BIN=$(cd "$FLOOR_ROOT" && cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/mtls_floor

cfg_floor_pair() {
  local out=$((PORT_BASE + 60)) inb=$((PORT_BASE + 61))
  ensure_free "$out" "$inb"
  start_bg floor-in "$FLOOR_BIN" in "127.0.0.1:$inb" "127.0.0.1:$UP_H1" cluster.local \
    "$PKI/ca.crt" "$PKI/server.crt" "$PKI/server.key"
  local pin=$LAST_PID
  start_bg floor-out "$FLOOR_BIN" out "127.0.0.1:$out" "127.0.0.1:$inb" cluster.local \
    "$PKI/ca.crt" "$PKI/client.crt" "$PKI/client.key" "$SERVER_ID"
  local pout=$LAST_PID
  wait_port "$inb" "$pin" floor-in
  wait_port "$out" "$pout" floor-out
  CFG_H1=$out
  CFG_H2=""
  CFG_H2_NOTE="L4 floor: h2c would be copied to the upstream's h2c port, not translated to HTTP/1.1"
  CFG_PROCS="out=$pout in=$pin"
  # peers.sh's inbound checks read the hop's TLS version from an HTTP answer (/__tls), which a
  # byte copy cannot give; the floor requires a client certificate all the same.
  CFG_INBOUND=""
  CFG_REJECT=tls
  CFG_HOPCTR=""
  CFG_DESC="mtls_floor x2 (proxy/examples/mtls_floor.rs): byte copy over one mTLS connection per client connection, no HTTP, no policy; current-thread runtime, 1 thread each"
}
