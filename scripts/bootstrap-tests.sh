#!/usr/bin/env bash
# One command: set up everything for the tests on a fresh Debian/Ubuntu machine with
# Python 3.11, then run them (the README's test command, `python -m pytest -q`).
#
#   bash scripts/bootstrap-tests.sh                    # install what is missing, run all tests
#   bash scripts/bootstrap-tests.sh tests/demo -x      # arguments go to pytest
#   bash scripts/bootstrap-tests.sh --install-only     # set up only
#   bash scripts/bootstrap-tests.sh --lint             # also ruff and mypy first (.ci/run)
#
# Steps (each skipped when already done, so a second run goes straight to pytest):
# the tools the tests call (mosquitto, mosquitto_passwd, mosquitto_sub, mosquitto_pub,
# openssl, cloud-init) via apt-get when missing; the clustered test broker (redis-server,
# nodejs, npm, aedes: scripts/install-cluster-broker.sh); the venv (.venv, or $VENV) with the
# pinned CPU torch and the `edge`, `verifier` and `dev` extras; an edge-only venv without
# torch ($SLED_EDGE_VENV, default /tmp/sled-edge-venv, rebuilt when the sources change);
# under CI=true (or SLED_BUILD_IMAGES=1) the Docker images for the tests marked `images`
# (deploy/images/build-local.sh; SLED_IMAGES_COLD=1 rebuilds them).
set -euo pipefail
# shellcheck source=scripts/bootstrap-lib.sh
. "$(dirname "$0")/bootstrap-lib.sh"

install_only=0 lint=0
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) install_only=1; shift ;;
    --lint) lint=1; shift ;;
    *) break ;;
  esac
done

step "system packages"
ensure_tools mosquitto:mosquitto mosquitto_passwd:mosquitto mosquitto_sub:mosquitto-clients \
  mosquitto_pub:mosquitto-clients openssl:openssl cloud-init:cloud-init

step "clustered test broker (tests/cluster: aedes nodes over Redis)"
bash "$REPO/scripts/install-cluster-broker.sh"

step "python environment"
ensure_venv "edge,verifier,dev"

step "edge-only venv (no torch): install size and sled edge against a real verifier"
export SLED_EDGE_VENV="${SLED_EDGE_VENV:-/tmp/sled-edge-venv}"
edge_want="$(tree_hash pyproject.toml schemas runtime edge_node)"
if [ -f "$SLED_EDGE_VENV/.sled-bootstrap-stamp" ] &&
  [ "$(cat "$SLED_EDGE_VENV/.sled-bootstrap-stamp")" = "$edge_want" ]; then
  echo "edge venv $SLED_EDGE_VENV: up to date (stamp $edge_want)"
else
  PYTHON="$(find_python)" bash "$REPO/scripts/make-edge-venv.sh" "$SLED_EDGE_VENV"
  echo "$edge_want" > "$SLED_EDGE_VENV/.sled-bootstrap-stamp"
fi

if [ -n "${CI:-}" ] || [ "${SLED_BUILD_IMAGES:-0}" = "1" ]; then
  step "images (deploy/images/build-local.sh: engine, Debian base images, edge amd64+arm64, verifier)"
  # the tests marked `images` run the real compose stack and the arm64 edge image under
  # qemu; warm runs reuse the images kept by this machine's engine
  $SUDO timeout 5400 bash "$REPO/deploy/images/build-local.sh"
fi

cd "$REPO"
if [ "$lint" = 1 ]; then
  step "ruff"
  ruff check .
  ruff format --check .
  step "mypy"
  mypy
fi
[ "$install_only" = 1 ] && { echo "set up; run the tests with: python -m pytest -q"; exit 0; }

step "tests: python -m pytest -q $*"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then echo "no tests collected"; exit 1; fi
exit "$rc"
