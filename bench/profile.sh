#!/usr/bin/env bash
# Profile batchserve's hot path: py-spy records it (speedscope format) while wrk drives predict
# at c=64; writes bench/profile-predict.json and prints the top functions. Needs `pip install py-spy`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m bench.run --profile --concurrency 64 --duration 15 "$@"
