#!/usr/bin/env bash
# make bench: the benchmarks under bench/, each writing bench/results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/lab.sh up
.venv/bin/python bench/drill.py "$@"
