#!/usr/bin/env bash
# Install the clustered test broker (tests/cluster, runtime/cluster.py): aedes MQTT broker
# nodes sharing sessions, retained messages and wills through Redis.
#   Debian: redis-server, nodejs (>= 16; bookworm has 18) and npm;
#   npm:    aedes 0.51.3, aedes-persistence-redis 10.0.0, mqemitter-redis 6.1.0, pinned by
#           broker/cluster/package-lock.json, into broker/cluster/node_modules (git-ignored).
# Idempotent; needs root or sudo only for apt-get. Called by the CI before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

missing=()
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v node >/dev/null || command -v nodejs >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Debian service is not needed: the tests start their own Redis on a free port.
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true

if [ ! -d broker/cluster/node_modules/aedes ] || \
   [ broker/cluster/package-lock.json -nt broker/cluster/node_modules/.package-lock.json ]; then
  (cd broker/cluster && npm ci --no-audit --no-fund --loglevel=error)
fi
node -e 'require("./broker/cluster/node_modules/aedes"); require("./broker/cluster/node_modules/aedes-persistence-redis"); require("./broker/cluster/node_modules/mqemitter-redis")'
echo "cluster broker ready: $(node --version), $(redis-server --version | cut -d' ' -f3), aedes $(node -p 'require("./broker/cluster/node_modules/aedes/package.json").version')"
