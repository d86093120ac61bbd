#!/usr/bin/env bash
# Runs perf_analyzer (Triton's load generator, from the tritonclient 2.48.0 wheel) installed by
# `make perf-analyzer` into .venv-perf, with the CUDA runtime it links on LD_LIBRARY_PATH (no
# GPU needed). Every argument goes to perf_analyzer, e.g.
#   bench/perf_analyzer.sh -m synthetic -u 127.0.0.1:8000 -i http --concurrency-range 1:16
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PERF_VENV:-$root/.venv-perf}"
[[ $venv = /* ]] || venv="$root/$venv"
binary="$venv/bin/perf_analyzer"
libs=("$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
if [[ ! -x $binary || ! -d ${libs[0]} ]]; then
  echo "perf_analyzer is not installed in $venv: run 'make perf-analyzer'" >&2
  exit 127
fi
export LD_LIBRARY_PATH="${libs[0]}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$binary" "$@"
