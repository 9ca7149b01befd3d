#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) within its 5-minute budget; one line and exit 0 where CUDA is absent.
#   bash bench/gpu_check.sh [--out docs/gpu_check]
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 300 python bench/gpu_check.py "$@"
