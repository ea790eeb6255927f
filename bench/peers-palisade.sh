# Palisade as one more row of ../shared/bench/peers.sh (sourced through PEERS_EXTRA).
#
#   PEERS_EXTRA=bench/peers-palisade.sh \
#   PEERS_CONFIGS="direct nginx_pair haproxy_pair envoy_pair palisade_pair" \
#   bash ../shared/bench/peers.sh
#
# Two `palisade proxy` processes in standalone mode (--static-config), one worker thread
# each, using peers.sh's own throwaway PKI (its SPIFFE client/server leaves). Both listen on
# 127.0.0.1, so the server workload moves its inbound with `palisade.dev/inbound-port`, and
# the Service carries `clusterIP: 127.0.0.1` so that a client addressing the outbound
# listener by IP (`Host: 127.0.0.1:<port>`, as wrk/h2load do) is routed to it. The inbound
# sidecar enforces the mesh's default deny plus the L7 policies below on every request.
#
# PALISADE_BEFORE_BIN=/path/to/palisade adds palisade_before_pair: the same pair run from another
# build, on ports PORT_BASE+50..55, so a change is measured before and after in one run.

PALISADE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log "building palisade (release) in $PALISADE_ROOT"
(cd "$PALISADE_ROOT" && cargo build --release -q --bin palisade) || die "cargo build failed"
PALISADE_BIN=$(cd "$PALISADE_ROOT" && cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/palisade

inbound_accepts() { # admin port: connections accepted by that inbound sidecar's mTLS listener
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
    awk '/^palisade_proxy_connections_total\{direction="inbound"\}/ {print $2}'
}
palisade_accepts() { inbound_accepts $((PORT_BASE + 45)); }
palisade_before_accepts() { inbound_accepts $((PORT_BASE + 55)); }

cfg_palisade_pair() { palisade_pair palisade "$PALISADE_BIN" 40 palisade_accepts; }

# PALISADE_BEFORE_BIN=path (a palisade binary from another build, e.g. before a change): one
# more configuration, palisade_before_pair, identical but for the binary, so that both builds
# are measured in the same run (add it to PEERS_CONFIGS).
if [ -n "${PALISADE_BEFORE_BIN:-}" ]; then
  [ -x "$PALISADE_BEFORE_BIN" ] || die "PALISADE_BEFORE_BIN=$PALISADE_BEFORE_BIN is not an executable"
  cfg_palisade_before_pair() {
    palisade_pair palisade-before "$PALISADE_BEFORE_BIN" 50 palisade_before_accepts
    CFG_DESC="$CFG_DESC; binary $PALISADE_BEFORE_BIN"
  }
fi

palisade_pair() { # name binary port-offset hop-counter
  local name=$1 bin=$2 base=$((PORT_BASE + $3))
  local out=$base out_in=$((base + 1)) inb=$((base + 2))
  local out_admin=$((base + 3)) in_out=$((base + 4)) in_admin=$((base + 5))
  ensure_free "$out" "$out_in" "$inb" "$out_admin" "$in_out" "$in_admin"
  local mesh=$WORK/$name-mesh
  mkdir -p "$mesh"
  cat >"$mesh/mesh.yaml" <<YAML
apiVersion: palisade.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: cluster.local, defaultAuthorization: deny}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {serviceAccount: client, address: 127.0.0.3}
---
apiVersion: palisade.dev/v1alpha1
kind: Workload
metadata:
  name: server
  namespace: shop
  labels: {app: server}
  annotations: {palisade.dev/inbound-port: "$inb"}
spec:
  serviceAccount: server
  address: 127.0.0.1
  ports: [{name: http, port: $UP_H1, appProtocol: http}]
---
apiVersion: palisade.dev/v1alpha1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  selector: {app: server}
  clusterIP: 127.0.0.1
  ports: [{name: http, port: $out, targetPort: $UP_H1, appProtocol: http}]
---
# Full L7 authorization on every request: default deny, an ALLOW on principal, method and
# path, and a DENY evaluated first.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: ["GET", "HEAD", "POST"], paths: ["/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
YAML
  start_bg "$name-in" "$bin" proxy --workload server --namespace shop --service-account server \
    --static-config "$mesh" --trust-anchors "$PKI/ca.crt" --cert "$PKI/server.crt" --key "$PKI/server.key" \
    --inbound "127.0.0.1:$inb" --outbound "127.0.0.1:$in_out" --admin "127.0.0.1:$in_admin" \
    --app-host 127.0.0.1 --worker-threads 1 --debug-headers
  local pin=$LAST_PID
  start_bg "$name-out" "$bin" proxy --workload client --namespace shop --service-account client \
    --static-config "$mesh" --trust-anchors "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key" \
    --inbound "127.0.0.1:$out_in" --outbound "127.0.0.1:$out" --admin "127.0.0.1:$out_admin" \
    --app-host 127.0.0.3 --worker-threads 1
  local pout=$LAST_PID
  wait_port "$inb" "$pin" "$name-in"
  wait_port "$out" "$pout" "$name-out"
  CFG_H1=$out
  CFG_H2=$out
  CFG_PROCS="out=$pout in=$pin"
  # peers.sh's positive control dials the inbound by IP, without SNI; the inbound refuses a
  # missing SNI (only `port-<n>.palisade.mesh` names a port, see the hardening issue), so the
  # control cannot apply and the inbound checks are left out. Refusals without a client
  # certificate are covered by the test suite (`cargo test --test e2e mtls::`).
  CFG_INBOUND=""
  CFG_REJECT=tls
  CFG_HOPCTR=$4
  CFG_DESC="palisade proxy x2 (standalone config), 1 data-plane worker thread each (+1 control thread), hop: HTTP/1.1 over pooled mTLS connections for HTTP/1.1 clients (at most 64 per peer, then the shared HTTP/2 connection), HTTP/2 mTLS for h2 clients; inbound checks skipped (it requires the SNI port-<n>.palisade.mesh)"
}
