# Shared steps of scripts/bootstrap-demo.sh and scripts/bootstrap-tests.sh (sourced, not run).
#
# Each step is idempotent and skips itself when its work is already done: a missing
# Debian package is installed with apt-get (nothing is updated when nothing is missing),
# and a virtual environment is (re)installed only when its stamp differs, the stamp being
# a hash of what decides its contents (pyproject.toml, the extras, the torch pin, the
# interpreter). A second run therefore costs a few seconds.
#
# Settings (environment): VENV (default .venv), PYTHON (an interpreter >= 3.11; default
# python3.11, else python3), SLED_TORCH_INDEX (a pip index URL for the torch wheel, e.g.
# the PyTorch CPU wheel index; default: pip's own configuration).

TORCH_PIN="torch==2.13.0"  # CPU wheel; pinned first: an unpinned torch pulls CUDA packages
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1  # weights come from the package index, never a model hub
export OMP_WAIT_POLICY=PASSIVE

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
_apt_updated=0

have_tool() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }

apt_install() {  # apt_install PACKAGE... (apt-get update once per script run)
  if ! command -v apt-get >/dev/null; then
    echo "cannot install $* here (no apt-get): install it yourself" >&2
    return 1
  fi
  if [ "$_apt_updated" = 0 ]; then $SUDO apt-get update -q && _apt_updated=1; fi
  $SUDO apt-get install -y -q --no-install-recommends "$@"
}

# ensure_tools TOOL:PACKAGE... — install the Debian package of every missing tool.
ensure_tools() {
  local pair tool package missing=()
  for pair in "$@"; do
    tool="${pair%%:*}" package="${pair#*:}"
    if ! have_tool "$tool" && [[ " ${missing[*]} " != *" $package "* ]]; then
      missing+=("$package")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && { echo "system tools: all present"; return 0; }
  echo "installing: ${missing[*]}"
  if [[ " ${missing[*]} " == *" cloud-init "* ]]; then
    # for the deploy/cloud-init schema test; disabled so that it never configures this machine
    $SUDO mkdir -p /etc/cloud && $SUDO touch /etc/cloud/cloud-init.disabled
  fi
  apt_install "${missing[@]}" || return 1
  for pair in "$@"; do
    have_tool "${pair%%:*}" || { echo "still missing after apt-get: ${pair%%:*}" >&2; return 1; }
  done
  # the Debian service is not needed: the demo and the tests start their own brokers
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
}

# find_python — print an interpreter >= 3.11 (PYTHON, python3.11 or python3) or fail.
find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "no Python >= 3.11 found (set PYTHON, or: apt-get install python3.11)" >&2
  return 1
}

# ensure_venv EXTRAS — $VENV with torch pinned and the project installed editable with
# EXTRAS (e.g. "demo,models"); skipped when its stamp matches. Activates it.
ensure_venv() {
  local extras="$1" python stamp_file want
  VENV="${VENV:-$REPO/.venv}"
  python="$(find_python)" || return 1
  want="$({
    cat "$REPO/pyproject.toml"
    echo "extras=$extras torch=$TORCH_PIN index=${SLED_TORCH_INDEX:-}"
    "$python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -c1-16)"
  stamp_file="$VENV/.sled-bootstrap-stamp"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ] &&
    "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ("sled", "torch")))' 2>/dev/null; then
    echo "venv $VENV: up to date (stamp $want), nothing to install"
  else
    if ! "$python" -c 'import ensurepip' 2>/dev/null; then
      # Debian/Ubuntu ship venv's pip bootstrap separately
      apt_install "python3-venv" || return 1
    fi
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    local log="$VENV/sled-bootstrap.log" index=()
    [ -n "${SLED_TORCH_INDEX:-}" ] && index=(--index-url "$SLED_TORCH_INDEX")
    echo "installing pip, $TORCH_PIN, then -e '.[$extras]' into $VENV (pip's output: $log)"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
      "$VENV/bin/python" -m pip install "$TORCH_PIN" "${index[@]}" &&
      "$VENV/bin/python" -m pip install -e "$REPO[$extras]"; } > "$log" 2>&1; then
      tail -n 25 "$log" >&2
      echo "pip failed (full output in $log)" >&2
      return 1
    fi
    "$VENV/bin/python" -c 'import torch; print("installed; torch", torch.__version__)'
    echo "$want" > "$stamp_file"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
}

# tree_hash PATH... — one hash of the contents of every file under PATHs (no caches).
tree_hash() {
  (cd "$REPO" && find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-16)
}
