#!/usr/bin/env bash
# The sipedge test suite: installs the Debian packages the tests talk to (real peers, never
# mocks) when they are missing, then runs every test. Usage: tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package that provides each command the tests run.
declare -A PACKAGE_OF=(
  [sipp]=sip-tester
  [promtool]=prometheus
  [dnsmasq]=dnsmasq
  [tshark]=tshark
  [kamailio]=kamailio
  [systemd-analyze]=systemd
  [valgrind]=valgrind
  [umoci]=umoci
  [runc]=runc
  [busybox]=busybox-static
  [podman]=podman
  [crun]=crun
  [skopeo]=skopeo
  [bwrap]=bubblewrap
)
missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$cmd]}")
done
if ((${#missing[@]})); then
  echo "tests/run.sh: installing missing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi
# Packaged services must not hold the ports the tests use.
for svc in kamailio dnsmasq prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# Offline validator for the Kubernetes manifests (PyPI, pinned).
KUBERNETES_VALIDATE_VERSION=1.34.1
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --doc
