#!/usr/bin/env bash
# Chapter 7's GPU measurements as one short script, for a session that is lent a GPU:
#   bash benchmarks/gpu_session.sh          (from the repository root, venv in .venv)
# 1. the ladder on the base model, twice as long as the default run, results written to
#    benchmarks/results/gpu_ladder-<device>.json (the chapter shows them with device and date);
# 2. the training command for a few hundred base-model steps in bf16 with compile and fused
#    AdamW, its peak memory and tokens/s in benchmarks/results/train-<device>.jsonl;
# 3. with two or more GPUs, the data-parallel run under torchrun (NCCL) next to it.
# Budget: a few minutes of device time; every step prints what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
device=$($PY -c "import torch; print(torch.cuda.get_device_name(0).split()[-1] if torch.cuda.is_available() else '')")
if [ -z "$device" ]; then echo "no CUDA device: nothing to measure" >&2; exit 1; fi
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 300 $PY -m benchmarks.gpu_ladder --steps 20 --json "benchmarks/results/gpu_ladder-$device.json"
out=$(mktemp -d)
timeout 240 $PY -m course_lib.train --task en-ko-large --examples 20000 --size base --device cuda \
  --precision bf16 --compile --fused-adamw --batch-tokens 16000 --steps 300 --warmup 50 \
  --eval-every 300 --log-every 50 --no-progress --out "$out/one"
cp "$out/one/metrics.jsonl" "benchmarks/results/train-$device.jsonl"
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  timeout 240 $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m course_lib.train \
    --task en-ko-large --examples 20000 --size base --precision bf16 --batch-tokens 8000 \
    --accumulate 1 --steps 100 --log-every 50 --no-progress --out "$out/ddp"
  cp "$out/ddp/metrics.jsonl" "benchmarks/results/train-ddp2-$device.jsonl"
fi
ls -l benchmarks/results/
