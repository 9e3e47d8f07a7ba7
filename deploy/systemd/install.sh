#!/usr/bin/env bash
# Installs sipedge as a systemd service: the binary, the unit, its readiness helper, and an
# example configuration (never over an existing one). DESTDIR stages into a package root.
#
# Usage: deploy/systemd/install.sh [BINARY]      (default: target/release/sipedge)
#   then: edit /etc/sipedge/sipedge.toml (backends), optionally /etc/default/sipedge
#         (SIPEDGE_ADMIN=<management address>:9090), and
#         systemctl daemon-reload && systemctl enable --now sipedge
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/sipedge}"
root="${DESTDIR:-}"

[ -x "$binary" ] || { echo "install.sh: no executable at $binary (cargo build --release)" >&2; exit 1; }
install -D -m 0755 "$binary" "$root/usr/bin/sipedge"
install -D -m 0755 "$here/wait-ready" "$root/usr/libexec/sipedge/wait-ready"
install -D -m 0644 "$here/sipedge.service" "$root/lib/systemd/system/sipedge.service"
install -D -m 0644 "$here/../README.md" "$root/usr/share/doc/sipedge/deploy/README.md"
install -d -m 0755 "$root/etc/sipedge"
if [ -e "$root/etc/sipedge/sipedge.toml" ]; then
  echo "keeping the existing $root/etc/sipedge/sipedge.toml"
else
  install -m 0644 "$repo/deploy/config/sipedge.toml" "$root/etc/sipedge/sipedge.toml"
fi
"$root/usr/bin/sipedge" --check-config "$root/etc/sipedge/sipedge.toml"
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed; start with: systemctl enable --now sipedge"
