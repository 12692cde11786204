#!/usr/bin/env bash
# Training on a GPU machine, in one run: correctness first, then throughput.
#
#   bash benchmarks/train_gpu_check.sh            # from the repository root; results in $OUT or ./train-gpu
#
# 1. the eight reference loss values computed on the GPU (TF32 off), needs ../shared/reference;
# 2. a tiny real run through the CLI: fp32, then --resume, then bf16, then export -> loadable generator;
#    with two or more GPUs also torchrun --nproc_per_node 2 (NCCL);
# 3. images/s of full training steps at 256 px, batch 6 / 12 / 24 pairs, fp32 and bf16 autocast, with and
#    without activation checkpointing (a configuration that does not fit is reported as out of memory).
set -euo pipefail
OUT=${OUT:-train-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== 1. loss parity on cuda"
python benchmarks/train_bench.py --device cuda --check --size 64 --ngf 8 --batch-size 2 --steps 1 --warmup 0 \
  2>&1 | tee "$OUT/check.txt"

echo "== 2. CLI: train, resume, bf16, export"
DATA="$OUT/data"
python - "$DATA" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from test_train import make_dataset
make_dataset(Path(sys.argv[1]), per_class=4, size=64)
PY
COMMON=(--data "$DATA" --size 64 --ngf 8 --batch-size 2 --save-every 2 --sample-every 4 --workers 2 --device cuda)
rm -rf "$OUT/run" "$OUT/run_bf16" "$OUT/run_ddp"
python -m agetool train "${COMMON[@]}" --out "$OUT/run" --max-steps 4
python -m agetool train --data "$DATA" --out "$OUT/run" --batch-size 2 --device cuda --resume --max-steps 6
python -m agetool train "${COMMON[@]}" --out "$OUT/run_bf16" --max-steps 4 --amp bf16
python -m agetool train export "$OUT/run" --out "$OUT/g.safetensors"
python -c "from agetool.nn.checkpoint import load_generator; g = load_generator('$OUT/g.safetensors', 'cuda'); print('export ok, ngf', g.cfg.ngf)"
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  torchrun --nproc_per_node 2 -m agetool train "${COMMON[@]}" --out "$OUT/run_ddp" --max-steps 4
fi

echo "== 3. throughput at 256 px"
python benchmarks/train_bench.py --device cuda --size 256 --batch-size 6 12 24 --amp none bf16 --steps 5 --warmup 2 \
  --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
echo "== 3b. the same with --grad-checkpoint (less memory: the larger batches fit)"
python benchmarks/train_bench.py --device cuda --size 256 --batch-size 6 12 24 --amp none bf16 --steps 5 --warmup 2 \
  --grad-checkpoint --json "$OUT/throughput_ckpt.json" 2>&1 | tee "$OUT/throughput_ckpt.txt"
