#!/usr/bin/env bash
# Issue 13's GPU check: MFU of a morejax training step on a ~1.1B LLaMA-style decoder (random
# weights, bf16 base, 2048 tokens) on one NVIDIA GPU, several settings, most important first.
#   bash benchmarks/gpu_mfu.sh        # each setting rewrites its section of results/benchmarks.md
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
run() { timeout "${RUN_TIMEOUT:-120}" "$PY" benchmarks/llama_mfu.py "$@" || echo "FAILED ($?): $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
run --method lora --batch 8 --attention cudnn --no-scan --section "LLaMA MFU, unrolled"
run --method lora --batch 16 --attention cudnn --no-scan --section "LLaMA MFU, batch 16, unrolled"
run --method more --batch 8 --attention cudnn --no-scan --section "LLaMA MFU, MoRe, unrolled"
run --method lora --batch 8 --attention cudnn --section "LLaMA MFU"
# attention einsum at batch 4 asked for 127.66 GiB (float32 scores kept for the backward): OOM.
run --method more --batch 8 --attention cudnn --section "LLaMA MFU, MoRe"
run --method lora --batch 4 --attention cudnn --section "LLaMA MFU, batch 4"
