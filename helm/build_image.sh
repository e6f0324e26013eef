#!/usr/bin/env bash
# `make image [IMAGE=distillery:0.1.0] [TARGET=gateway]`: build the Dockerfile with buildah (no
# Docker engine needed) and smoke-test the result: `distillery --help`, then `distillery serve`
# answering GET /healthz, probed with the image's own HEALTHCHECK command.
#
# Where base images cannot be pulled (this project's CI machines), the Python base is made
# locally first: a debootstrapped Debian bookworm with Debian's python3.11 linked into
# /usr/local/bin, committed under the official image's name. It stands in for
# python:3.11.x-slim-bookworm (same Debian, a different Python patch release); with registry
# access, buildah pulls the real one instead (PULL=missing).
# Not part of `make test`: it needs root, apt and PyPI access, and minutes.
set -euo pipefail

IMAGE=${1:-distillery:0.1.0}
TARGET=${TARGET:-gateway}
PULL=${PULL:-never}
cd "$(dirname "$0")/.."
BASE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
CA=/etc/ssl/certs/ca-certificates.crt

say() { printf 'image: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null && return
  say "installing $2 (apt)"
  apt-get install -y -q "$2" >/dev/null
}
need buildah buildah

make_base() {
  need debootstrap debootstrap
  local rootfs ctr mnt
  rootfs=$(mktemp -d /tmp/distillery-base.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  say "no $BASE here and PULL=never: making a stand-in with debootstrap (a few minutes)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" apt-get install -y -q --no-install-recommends \
    python3.11 python3.11-venv ca-certificates >/dev/null
  chroot "$rootfs" apt-get clean
  : > "$rootfs/etc/resolv.conf"
  for name in python python3 python3.11; do
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"
  done
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$rootfs/." "$mnt/"
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr"
  buildah commit -q "$ctr" "$BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
}

if [ "$PULL" = never ] && ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  make_base
fi

# torch (train/demo targets) from this machine's local wheel when there is one; otherwise the
# Dockerfile's default, PyTorch's CPU index.
torch_args=()
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  torch_args=(-v /opt/wheels:/opt/wheels:ro --build-arg "TORCH_PIP_ARGS=--find-links /opt/wheels")
fi

say "building target $TARGET as $IMAGE"
start=$(date +%s)
buildah bud --pull="$PULL" --format docker --target "$TARGET" -t "$IMAGE" \
  -v "$CA:$CA:ro" --build-arg PIP_CERT="$CA" "${torch_args[@]}" -f Dockerfile .
say "built in $(( $(date +%s) - start )) s; size: $(buildah images --format '{{.Size}}' "$IMAGE")"

ctr=$(buildah from "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
say "smoke: distillery --help"
buildah run --user 10001 "$ctr" -- distillery --help >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The HEALTHCHECK's argv (Test = ["CMD", argv...]), run as is inside the container below.
mapfile -t health < <(buildah inspect \
  --format '{{range .Docker.Config.Healthcheck.Test}}{{.}}{{"\n"}}{{end}}' "$IMAGE" | tail -n +2)
[ "${#health[@]}" -gt 0 ] || { say "the image has no HEALTHCHECK"; exit 1; }
say "smoke: distillery serve on port $port, then the HEALTHCHECK command"
# No model server, Elasticsearch or jail privileges here: /healthz only says the process is up.
buildah run --user 10001 --env DISTILLERY_PORT="$port" --env DISTILLERY_EXECUTOR=local \
  --env DISTILLERY_MODEL_URL=http://127.0.0.1:9/v1 --env DISTILLERY_MODEL=smoke \
  --env DISTILLERY_ES_URL=http://127.0.0.1:9 "$ctr" -- sh -c '
    distillery serve --host 127.0.0.1 --port "$DISTILLERY_PORT" & pid=$!
    ok=0
    for _ in $(seq 60); do
      if "$@" 2>/dev/null; then ok=1; break; fi
      sleep 1
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [ "$ok" = 1 ]' smoke "${health[@]}"
say "ok: $IMAGE answers /healthz"
