#!/usr/bin/env bash
# Create a virtual environment with only the `edge` extra installed (no torch): what an
# edge device (Raspberry Pi, Jetson) installs. Prints the path and installed size.
#
#   scripts/make-edge-venv.sh [VENV_DIR]      # default: $SLED_EDGE_VENV or /tmp/sled-edge-venv
#   SLED_EDGE_VENV=/tmp/sled-edge-venv python -m pytest tests/deploy/test_edge_venv.py
#
# PYTHON picks the interpreter (default python3). The install is the same as
# edge_node/Dockerfile's and deploy/cloud-init/user-data.yaml's: pip install '<repo>[edge]'.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${SLED_EDGE_VENV:-${TMPDIR:-/tmp}/sled-edge-venv}}"
python="${PYTHON:-python3}"

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q "$repo[edge]"

if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "error: torch was installed into the edge venv" >&2
  exit 1
fi
"$venv/bin/sled" edge --help > /dev/null

size_mb="$(du -sm "$venv" | cut -f1)"
echo "edge venv: $venv (${size_mb} MB installed, target <= 250 MB)"
