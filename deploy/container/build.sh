#!/usr/bin/env bash
# Builds the sipedge OCI image without a daemon and without pulling anything from a registry:
# stages a root filesystem (the binary, the shared libraries it links, a passwd entry for the
# numeric non-root user, the container config, a wget for the preStop drain hook) and packs it
# with umoci as a single-layer image whose configuration comes from Containerfile.
#
# Usage: deploy/container/build.sh [options]
#   --binary PATH        sipedge binary (default: target/release/sipedge, built if missing)
#   --config PATH        config baked in as /etc/sipedge/sipedge.toml
#                        (default: deploy/container/sipedge.toml)
#   --out DIR            OCI image layout to write (default: target/oci/sipedge)
#   --tag TAG            image tag (default: the crate version)
#   --docker-archive F   also write a docker-archive tarball (docker load / podman load), via skopeo
#   --stage DIR          only stage the root filesystem into DIR (the build context for
#                        podman/buildah/docker build -f deploy/container/Containerfile DIR)
# Needs: umoci (Debian umoci), busybox-static (Debian busybox-static), ldd (libc-bin);
# skopeo (Debian skopeo) for --docker-archive; strip (binutils) is used when present.
# Push:  skopeo copy oci:target/oci/sipedge:TAG docker://REGISTRY/sipedge:TAG
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
containerfile="$here/Containerfile"

binary=""
config="$here/sipedge.toml"
out="${CARGO_TARGET_DIR:-$repo/target}/oci/sipedge"
tag=""
docker_archive=""
stage_only=""
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --docker-archive) docker_archive="$2"; shift 2 ;;
    --stage) stage_only="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

need() { # command, Debian package
  command -v "$1" >/dev/null 2>&1 || {
    echo "build.sh: '$1' not found: apt-get install $2" >&2
    exit 1
  }
}
need ldd libc-bin
[ -n "$stage_only" ] || need umoci umoci
[ -z "$docker_archive" ] || need skopeo skopeo
busybox=/bin/busybox
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "build.sh: a static /bin/busybox is needed for the drain hook's wget: apt-get install busybox-static" >&2
  exit 1
fi

if [ -z "$tag" ]; then
  tag="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)"
fi
if [ -z "$binary" ]; then
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/sipedge"
  if ! [ -x "$binary" ]; then
    (cd "$repo" && cargo build --release --bin sipedge)
  fi
fi
[ -x "$binary" ] || { echo "build.sh: no executable at $binary" >&2; exit 1; }
[ -f "$config" ] || { echo "build.sh: no config at $config" >&2; exit 1; }

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
rootfs="${stage_only:-$workdir/rootfs}"
mkdir -p "$rootfs"

# --- the root filesystem -------------------------------------------------------------------
install -d -m 0755 "$rootfs/usr/bin" "$rootfs/etc/sipedge" "$rootfs/usr/libexec/sipedge" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$rootfs/usr/bin/sipedge" "$binary"
else
  cp "$binary" "$rootfs/usr/bin/sipedge"
fi
chmod 0755 "$rootfs/usr/bin/sipedge"
# Every shared object the dynamic loader will map, at the path ldd names (symlinks resolved).
ldd "$binary" | grep -o '/[^ )]*' | sort -u | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
# busybox picks its applet from argv[0]: under this name it is only wget.
install -m 0755 "$busybox" "$rootfs/usr/libexec/sipedge/wget"
install -m 0644 "$config" "$rootfs/etc/sipedge/sipedge.toml"
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/sbin/nologin
sipedge:x:65532:65532:sipedge:/:/sbin/nologin
nobody:x:65534:65534:nobody:/:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
sipedge:x:65532:
nogroup:x:65534:
GROUP
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

if [ -n "$stage_only" ]; then
  echo "staged root filesystem in $rootfs"
  exit 0
fi

# --- image configuration from Containerfile ------------------------------------------------
# Values of every "KEY ..." line, in order.
directive() { sed -n "s/^$1[[:space:]]\{1,\}//p" "$containerfile"; }
# A JSON exec form ["a", "b"] as one argument per line.
exec_form() { sed 's/^\[//; s/\]$//' | tr ',' '\n' | sed 's/^[[:space:]]*"//; s/"[[:space:]]*$//'; }

config_args=(--config.user "$(directive USER | tail -n1)" --config.workingdir /)
config_args+=(--config.stopsignal "$(directive STOPSIGNAL | tail -n1)")
config_args+=(--config.env "PATH=/usr/bin")
while read -r env; do config_args+=(--config.env "$env"); done < <(directive ENV)
while read -r port; do config_args+=(--config.exposedports "$port"); done < <(directive EXPOSE)
while read -r arg; do config_args+=(--config.entrypoint "$arg"); done < <(directive ENTRYPOINT | tail -n1 | exec_form)
while read -r arg; do config_args+=(--config.cmd "$arg"); done < <(directive CMD | tail -n1 | exec_form)
while read -r label; do config_args+=(--config.label "$(printf '%s' "$label" | tr -d '"')"); done < <(directive LABEL)
config_args+=(--config.label "org.opencontainers.image.version=$tag")

# --- pack with umoci -------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
rootless=()
[ "$(id -u)" -eq 0 ] || rootless=(--rootless)
umoci insert "${rootless[@]}" --image "$out:$tag" --history.created_by "deploy/container/build.sh" "$rootfs" /
umoci config --image "$out:$tag" --os linux --architecture "$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')" \
  --history.created_by "deploy/container/Containerfile" "${config_args[@]}"
umoci gc --layout "$out"

if [ -n "$docker_archive" ]; then
  skopeo copy --quiet "oci:$out:$tag" "docker-archive:$docker_archive:sipedge:$tag"
fi
echo "built oci:$out:$tag"
