#!/usr/bin/env bash
# Installs sipedge as a systemd service: the binary, the unit, its readiness helper, the
# sipedge system user (sysusers.d), and an example configuration (never over an existing one),
# root:sipedge 0640. DESTDIR stages into a package root (the user is then the package's job).
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
install -D -m 0644 "$here/sipedge.sysusers" "$root/usr/lib/sysusers.d/sipedge.conf"
install -D -m 0644 "$here/../README.md" "$root/usr/share/doc/sipedge/deploy/README.md"
install -d -m 0750 "$root/etc/sipedge"
if [ -e "$root/etc/sipedge/sipedge.toml" ]; then
  echo "keeping the existing $root/etc/sipedge/sipedge.toml"
else
  install -m 0640 "$repo/deploy/config/sipedge.toml" "$root/etc/sipedge/sipedge.toml"
fi
"$root/usr/bin/sipedge" --check-config "$root/etc/sipedge/sipedge.toml"
if [ -z "$root" ]; then
  # The system user, then the config readable by it alone (it holds proxy.secret).
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/sipedge.conf
  elif ! id sipedge >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin sipedge
  fi
  chown root:sipedge /etc/sipedge /etc/sipedge/sipedge.toml
  chmod 0750 /etc/sipedge
  chmod 0640 /etc/sipedge/sipedge.toml
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
fi
echo "installed; start with: systemctl enable --now sipedge"
