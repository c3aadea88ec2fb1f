#!/usr/bin/env bash
# Every GPU figure of issue 16 in one run on one GPU (sized for an H200, under 10 minutes):
#   1. kontext_memory.py at FLUX-12B shape, 4 references, LoRA r64, 512 px, bf16: with gradient checkpointing,
#      without it, and with an nf4 base (model.quantization: nf4) plus checkpointing;
#   2. rollout_overhead.py --device cuda --dtype bfloat16 (psrl's rollout / FluxPipeline);
#   3. grpo_iteration.py on cuda in bf16, with the train-phase MFU;
#   4. the gpu-marked tests of the quantized base, the reward device and the GPU oracles.
# Run from the repository root:
#   OUT=/tmp/gpu-out bash benchmarks/gpu_checks.sh
# Output: $OUT/gpu_checks.log (everything) and $OUT/summary.txt (the figure lines). A step that fails or runs out
# of time is recorded as FAILED / TIMEOUT and the next one still runs; the exit status is non-zero if any failed.
# Packages the GPU machine lacks (diffusers, bitsandbytes, torchao) are installed from PSRL_WHEELS when set, e.g.
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d wheels diffusers bitsandbytes torchao
set -euo pipefail

OUT="${OUT:-$(mktemp -d /tmp/psrl-gpu-checks-XXXXXX)}"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-570}"  # seconds for all steps together; each step also has its own limit
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY" >>"$LOG"; }

# step NAME LIMIT_S GREP_PATTERN COMMAND...: run with min(LIMIT_S, what is left of BUDGET); keep going on failure
step() {
  local name="$1" limit="$2" pattern="$3"
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    note "[$name] SKIPPED: budget spent"
    FAILED=1
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "===== [$name] (limit ${limit}s): $*" >>"$LOG"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$OUT/.step.txt" 2>&1 || rc=$?
  cat "$OUT/.step.txt" >>"$LOG"
  if ((rc == 0)); then
    note "[$name] ok in $((SECONDS - t0))s: $*"
  elif ((rc == 124 || rc == 137)); then
    note "[$name] TIMEOUT after ${limit}s: $*"
    FAILED=1
  else
    note "[$name] FAILED (exit $rc) in $((SECONDS - t0))s: $* -- $(tail -n 1 "$OUT/.step.txt")"
    FAILED=1
  fi
  grep -E "$pattern" "$OUT/.step.txt" | sed "s/^/    /" >>"$SUMMARY" || true
  rm -f "$OUT/.step.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    || true
} 2>&1 | tee -a "$SUMMARY" >>"$LOG"

for pkg in diffusers bitsandbytes torchao; do
  if ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
    if [[ -n "${PSRL_WHEELS:-}" ]]; then
      "$PY" -m pip install -q --no-index --find-links "$PSRL_WHEELS" "$pkg" >>"$LOG" 2>&1 \
        || note "could not install $pkg from $PSRL_WHEELS"
    else
      note "$pkg is not installed and PSRL_WHEELS is unset"
    fi
  fi
done
"$PY" -c "import diffusers" >/dev/null 2>&1 || { note "diffusers is missing: nothing can run"; exit 1; }

MEM=(benchmarks/kontext_memory.py --device cuda --dtype bfloat16 --refs 4 --lora-rank 64 --size 512)
MEMPAT="shape=|rollout\+reward:|train:|iteration peak"
step kontext_ckpt 110 "$MEMPAT" "$PY" "${MEM[@]}" --gradient-checkpointing
step kontext_nockpt 110 "$MEMPAT" "$PY" "${MEM[@]}"
if "$PY" -c "import bitsandbytes" >/dev/null 2>&1; then
  step kontext_nf4 190 "$MEMPAT" "$PY" "${MEM[@]}" --gradient-checkpointing --quantization nf4
else
  note "[kontext_nf4] SKIPPED: bitsandbytes is not installed"
  FAILED=1
fi
step rollout_overhead 60 "median|ratio" "$PY" benchmarks/rollout_overhead.py --device cuda --dtype bfloat16 \
  --batch 8 --steps 10
step grpo_iteration 70 "rollout:|reward:|train:|total:|FLOPs|MFU|peak CUDA" "$PY" benchmarks/grpo_iteration.py \
  --device cuda --dtype bfloat16 --groups 4 --group-size 8 --batch 8 --steps 10
step gpu_tests 90 "passed|failed|skipped|error" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_quantization.py tests/test_reward_device.py tests/test_gpu.py

note "total $((SECONDS - START))s; logs in $OUT"
exit "$FAILED"
