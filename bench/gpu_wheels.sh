#!/usr/bin/env bash
# Here, with network: fill .gpu/ (git-ignored) with what bench/gpu_check.sh needs on a CUDA
# machine that has PyTorch and no network: the wheels of everything else batchserve and its tests
# need (bench/gpu_deps.py says which: constraints.txt's versions, for CPython 3.12 on x86-64
# Linux), the requirements its pip installs from them, this machine's wrk with the libraries it
# links, and the benchmark's request bodies (real MNIST digits where they can be had).
# Needs this checkout's venv with the dev extra (.ci/run's install) and wrk. About a minute.
# Usage: bench/gpu_wheels.sh [--python-version 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
python_version=3.12
if [ "${1:-}" = "--python-version" ]; then python_version=${2:?}; fi
carry=.gpu
limit_bytes=$((64 * 1024 * 1024))

git check-ignore -q "$carry/" || { echo "gpu_wheels: $carry/ is not git-ignored" >&2; exit 2; }
mkdir -p "$carry/wheels"

echo "== wheels for CPython $python_version (torch excluded: the machine's CUDA build is used)"
"$PY" -m bench.gpu_deps download "$carry/wheels" --python-version "$python_version" \
  2> >(grep -v '^WARNING: Location' >&2)
"$PY" -m bench.gpu_deps requirements > "$carry/requirements.txt"

echo "== wrk and the libraries it links (used there when the machine has no wrk of its own)"
wrk_path=$(command -v wrk) || { echo "gpu_wheels: no wrk here (apt-get install -y wrk)" >&2; exit 2; }
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging/bin" "$staging/lib"
cp "$wrk_path" "$staging/bin/wrk"
# Every library but the C library's own (libc, libm, libpthread, ld-linux, libgcc_s): those
# must be the machine's.
ldd "$wrk_path" | awk '$3 ~ /^\// {print $3}' \
  | grep -vE '/(libc|libm|libpthread|libdl|librt|libgcc_s|ld-linux[^/]*)\.so' \
  | while read -r lib; do cp -L "$lib" "$staging/lib/"; done
tar -C "$staging" -czf "$carry/wrk.tar.gz" bin lib

echo "== request bodies"
"$PY" - "$carry/bodies" <<'EOF'
import sys
from pathlib import Path

from bench.bodies import write_bodies

for endpoint, written in write_bodies(Path(sys.argv[1])).items():
    print(f"   {endpoint}: {written['note']}")
EOF

carried_bytes=$(du -sb "$carry" | cut -f1)
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "== $carry: $(find "$carry/wheels" -name "*.whl" | wc -l) wheels; $((carried_bytes / 1024 / 1024)) MiB" \
  "carried + $((tree_bytes / 1024 / 1024)) MiB of tracked files (the device call's limit: 64 MiB)"
if [ $((carried_bytes + tree_bytes)) -gt "$limit_bytes" ]; then
  echo "gpu_wheels: over the 64 MiB a device call carries; leave more behind (bench/gpu_deps.py)" >&2
  exit 1
fi
echo "Run there: bash bench/gpu_check.sh, carrying $carry (bench/README.md, 'GPU check')"
