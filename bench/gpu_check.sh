#!/usr/bin/env bash
# One check of batchserve on a CUDA machine, in under 5 minutes, one table out: the suite with
# device auto, the model-only ceiling on the GPU at batch 1..8192, end to end at c=64 and c=256
# with BATCHSERVE_DEVICE=cuda (pinned memory on and off, N workers, torch.compile), and names-lm's
# CUDA log-probabilities against the CPU's. Where torch sees no CUDA device it runs the same
# stages on the CPU and the table says so.
#
# On a machine with PyTorch but without batchserve's other packages and no network, it first
# installs the wheels that bench/gpu_wheels.sh put in .gpu/ (carried there), into that Python's
# own environment, torch untouched; wrk, when the machine has none, is the carried one.
# Usage: bench/gpu_check.sh [--quick] [bench/gpu_check.py options]
# Writes gpu_check.md, gpu_check.json, suite.log, servers.log and install.log to $OUT, else to
# bench/gpu-check/. Exits 1 when a row is FAILED.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
total_s=${GPU_CHECK_TOTAL_S:-290}
out=${OUT:-$PWD/bench/gpu-check}
mkdir -p "$out"
carry=${GPU_CHECK_CARRY:-$PWD/.gpu}
log=$out/install.log
: > "$log"

# This checkout's venv where it has torch (a developer's machine), else the machine's python3.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
    PY=$PWD/.venv/bin/python
  else
    PY=$(command -v python3)
  fi
fi
"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_check: $PY has no torch" >&2; exit 2; }

needs_packages() {
  ! "$PY" -c 'import fastapi, uvicorn, pydantic_settings, orjson, grpc_health, pytest_asyncio' \
    2>/dev/null
}

# Only the carried wheels and what is installed count: no pip configuration of the machine's
# (its find-links, constraints or indexes) takes part.
pip_alone=(env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL
           PIP_CONFIG_FILE=/dev/null "$PY" -m pip)

# bench/gpu_install.py picks the carried wheels of the packages that are missing or too old
# (pip's choice, without its refusal of everything over one need the machine leaves unmet); pip
# installs them --no-deps into that Python's own environment. No torch wheel travels.
install_carried() {
  echo "== installing carried wheels into $("$PY" -c 'import sys; print(sys.prefix)')" | tee -a "$log"
  local chosen wheels
  chosen=$("$PY" -m bench.gpu_install "$carry/wheels" "$carry/requirements.txt" 2>>"$log") \
    || { echo "   bench/gpu_install.py failed (install.log)" | tee -a "$log"; return 0; }
  [ -n "$chosen" ] || return 0
  mapfile -t wheels <<< "$chosen"
  echo "   ${#wheels[@]} wheels (install.log lists them and any warning)" | tee -a "$log"
  local pip=("${pip_alone[@]}" install --no-index --no-deps --no-compile --no-cache-dir
             --disable-pip-version-check --progress-bar off)
  # A package pip cannot uninstall (installed without a RECORD) is written over instead.
  timeout 150 "${pip[@]}" "${wheels[@]}" >>"$log" 2>&1 \
    || timeout 150 "${pip[@]}" --ignore-installed "${wheels[@]}" >>"$log" 2>&1 \
    || echo "   pip failed (install.log)" | tee -a "$log"
}

# batchserve itself: its metadata and `batchserve` command, which tests use; --no-deps, since
# its torch==2.13.0 pin would ask for a torch that cannot travel.
install_batchserve() {
  local scripts
  scripts=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  # From / : a batchserve.egg-info in this checkout must not pass for an installed batchserve.
  if (cd / && "$PY" -c 'import importlib.metadata as m; m.version("batchserve")' 2>/dev/null) \
    && [ -x "$scripts/batchserve" ]; then
    return 0
  fi
  echo "== installing batchserve (editable, --no-deps)" | tee -a "$log"
  timeout 90 "${pip_alone[@]}" install --no-index --no-deps --no-build-isolation --no-cache-dir \
    --disable-pip-version-check -e . >>"$log" 2>&1 \
    || echo "   could not (install.log): tests of the installed command will fail" | tee -a "$log"
}

# The machine's wrk, else the carried one with the libraries it links (a wrapper keeps them
# off every other program's library path), else the driver's Python load generator.
runs_wrk() {  # `wrk -v` prints its version and exits 1
  local said
  said=$("$@" -v 2>&1 || true)
  [[ $said == wrk\ * ]]
}

find_wrk() {
  runs_wrk wrk && return 0
  [ -f "$carry/wrk.tar.gz" ] || return 0
  local dir=/tmp/gpu-check-wrk
  mkdir -p "$dir/path" && tar -C "$dir" -xzf "$carry/wrk.tar.gz"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/bin/wrk "$@"\n' "$dir" "$dir" > "$dir/path/wrk"
  chmod +x "$dir/path/wrk"
  if runs_wrk "$dir/path/wrk"; then
    export PATH=$dir/path:$PATH
    echo "== using the carried wrk" | tee -a "$log"
  else
    echo "== the carried wrk does not run here; the Python load generator stands in" | tee -a "$log"
    "$dir/path/wrk" -v >>"$log" 2>&1 || true
  fi
}

if needs_packages; then
  if [ ! -d "$carry/wheels" ]; then
    echo "gpu_check: $PY lacks batchserve's packages and there is no .gpu/wheels" \
      "(run bench/gpu_wheels.sh where there is network, and carry .gpu)" >&2
    exit 2
  fi
  install_carried
fi
install_batchserve
find_wrk
needs_packages && { echo "gpu_check: the packages are still missing (install.log)" >&2; exit 2; }

budget=$((total_s - (SECONDS - started) - 15))
[ "$budget" -ge 60 ] || budget=60  # a slow install still leaves the driver a minute
echo "== driver: $budget s of the $total_s s left" | tee -a "$log"
status=0
PYTHONUNBUFFERED=1 timeout --kill-after=10 $((budget + 10)) \
  "$PY" -m bench.gpu_check --out "$out" --budget-s "$budget" "$@" || status=$?
echo "gpu_check: $((SECONDS - started)) s in all; $out/gpu_check.md"
exit "$status"
