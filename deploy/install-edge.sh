#!/bin/sh
# Install the SLED edge node on a device without Docker (Raspberry Pi OS, Ubuntu,
# Jetson Linux): a venv with the `edge` extra only (no torch), a `sled` system user,
# the systemd unit, and /etc/sled/edge.toml (example; kept if it exists).
#
#   sudo sh install-edge.sh PIP_SPEC
#
# PIP_SPEC: what to pip install, with the extra, e.g.
#   /boot/firmware/sled_mqtt-0.1.0-py3-none-any.whl[edge]   (a wheel copied to the SD card)
#   'sled-mqtt[edge] @ git+https://HOST/ORG/sled-mqtt.git'
#   /home/pi/sled-mqtt[edge]                                  (a checkout)
# Default: the first sled_mqtt-*.whl on the boot partition (/boot/firmware or /boot).
# Needs python3 (>= 3.11) with venv; cloud-init (deploy/cloud-init/user-data.yaml) runs
# this file after installing python3-venv.
set -eu

PREFIX=/opt/sled
VENV="$PREFIX/venv"
UNIT_SRC="$(dirname "$0")/systemd/sled-edge.service"

spec="${1:-}"
if [ -z "$spec" ]; then
  for dir in /boot/firmware /boot; do
    for wheel in "$dir"/sled_mqtt-*.whl; do
      if [ -f "$wheel" ]; then spec="$wheel[edge]"; break 2; fi
    done
  done
fi
if [ -z "$spec" ]; then
  echo "usage: $0 PIP_SPEC   (no sled_mqtt-*.whl on the boot partition)" >&2
  exit 2
fi

id sled >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin sled

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade --no-cache-dir "$spec"
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "note: torch is in $VENV; the edge node does not need it" >&2
fi
"$VENV/bin/sled" edge --help >/dev/null

# The demo drafters ship inside the package: /opt/sled/models -> …/sled/demo/models
models="$("$VENV/bin/python" -c 'import pathlib, sled.demo; print(pathlib.Path(sled.demo.__file__).parent / "models")')"
ln -sfn "$models" "$PREFIX/models"

mkdir -p /etc/sled
if [ ! -f /etc/sled/edge.toml ]; then
  "$VENV/bin/python" - <<'PY'
import pathlib
example = """[edge]
device_id = "edge-1"
broker_url = "mqtt://127.0.0.1:1883"
drafter_dir = "/opt/sled/models/drafter-1l-onnx"
"""
pathlib.Path("/etc/sled/edge.toml").write_text(example)
PY
  echo "wrote a minimal /etc/sled/edge.toml: set device_id, broker_url, username, password" >&2
fi
chown root:sled /etc/sled/edge.toml
chmod 0640 /etc/sled/edge.toml

if [ -f "$UNIT_SRC" ] && [ ! -f /etc/systemd/system/sled-edge.service ]; then
  install -m 0644 "$UNIT_SRC" /etc/systemd/system/sled-edge.service
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now sled-edge.service
fi
echo "sled edge installed in $VENV ($(du -sm "$VENV" | cut -f1) MB)"
