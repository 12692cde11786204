#!/usr/bin/env bash
# GPU check, at most 5 minutes on one CUDA device, no network needed:
#   parity with the reference fixtures (float32 within 1e-3; bfloat16 / float16 PSNR >= 40 dB),
#   the whole `agetool age` command cold and warm and the single-frame (slider) latency,
#   decode throughput at batch 32/64/128 in float32 and bfloat16, eager and torch.compile,
#   peak memory. Writes its tables into benchmarks/RESULTS.md (and $OUT when set).
# Dry run of the end-to-end part on a CPU: python -m benchmarks.gpu_check --device cpu --parts e2e --no-write
# Fixtures: $AGETOOL_REFERENCE, else ../shared/reference beside the repository.
# Usage: bash benchmarks/gpu_check.sh [--batches 32,64,128] [--no-compile] [--device cuda:1]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# SIGINT first: the script then writes what it has measured; the check stops itself at 270 s
timeout --signal=INT --kill-after=15 290 "$PY" -m benchmarks.gpu_check --budget 270 "$@"
status=$?
[ "$status" -eq 124 ] && echo "gpu_check: stopped at the time limit" >&2
exit "$status"
