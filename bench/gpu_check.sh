#!/usr/bin/env bash
# The GPU check of issue 19 in one command (what it measures: bench/gpu_check.py). From anywhere:
#     bash bench/gpu_check.sh                        # on a machine with a GPU: ~6-8 minutes on one H100 / H200
#     bash bench/gpu_check.sh --device cpu --tiny    # the same sections, tiny shapes, on a CPU (tests/test_precision.py)
# Writes $OUT/gpu_check.json and $OUT/gpu_check.md ($OUT defaults to ./gpu_check; --out DIR overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# freed CPU tensors go back to the OS, so that the CPU run's peak RSS follows live memory
export MALLOC_MMAP_THRESHOLD_=65536
exec "${PYTHON:-python}" bench/gpu_check.py "$@"  # --out defaults to $OUT, else ./gpu_check
