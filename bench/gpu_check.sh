#!/usr/bin/env bash
# One prepared run on a GPU box (see bench/gpu_check.py). Needs torch, triton and transformers;
# nothing is installed. Works from the repository root without installing tunekv.
#   bash bench/gpu_check.sh            # full check, < 8 minutes on an H100
#   bash bench/gpu_check.sh --smoke    # tiny shapes on the CPU (Triton interpreter): tests the script
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
# tunekv/ plus engine/, kernels/ and presets/ mapped in as tunekv.engine, tunekv.kernels, tunekv.presets.
mkdir "$shim/tunekv"
for entry in "$root"/tunekv/*; do ln -s "$entry" "$shim/tunekv/$(basename "$entry")"; done
ln -s "$root/engine" "$shim/tunekv/engine"
ln -s "$root/kernels" "$shim/tunekv/kernels"
ln -s "$root/presets" "$shim/tunekv/presets"
# Not the root itself: its kernels/ would shadow an installed `kernels` package that transformers imports.
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ " $* " == *" --smoke "* ]]; then export TRITON_INTERPRET=1; fi
python3 "$root/bench/gpu_check.py" "$@"
