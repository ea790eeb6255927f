# Shared by bench/run.sh and bench/tap.sh (sourced after they define log, die and ROOT):
# a work dir removed on exit with every process started in it, start_bg, wait_http, and the
# release binaries.

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
