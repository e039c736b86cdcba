#!/usr/bin/env bash
# The prepared GPU check: the CUDA-only tests, then short bf16 IGPO and GRPO runs at the
# paper's group size (G = 16), printing step times and the time split. Sized to finish in
# well under 10 minutes on one H200-class GPU with no internet.
#
#   make gpu-assets                     # here, once: wheels + SmolLM2's tokenizer into .gpu/
#   bash benchmarks/gpu_check.sh        # on the GPU machine (carry .gpu/); output in $OUT
#
# The GPU machine's image brings python3 with torch, transformers, peft and pytest; .gpu/wheels
# adds what it lacks (gymnasium, bm25s, ...), installed with --no-deps from the folder.
# SmolLM2-135M's weights (a 98 MB GGUF) are over the 64 MiB a device call may carry, so the
# runs use a model of SmolLM2-135M's exact shape (30 layers, 576 wide, 9 heads / 3 KV heads,
# its tokenizer) with random weights: the timings are SmolLM2-sized; the rewards mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu_check}
ASSETS=${GPU_ASSETS:-.gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
export IGPO_CACHE=${IGPO_CACHE:-/tmp/igpo-gpu-cache}
[ -d "$ASSETS/wheels" ] || { echo "no $ASSETS/wheels: run 'make gpu-assets' first" >&2; exit 2; }
$PY -m pip install -q --no-index --no-deps "$ASSETS"/wheels/*.whl
mkdir -p "$IGPO_CACHE/models"
rm -rf "$IGPO_CACHE/models/smollm2-135m-instruct-tokenizer"
cp -r "$ASSETS/tokenizer" "$IGPO_CACHE/models/smollm2-135m-instruct-tokenizer"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', torch.cuda.is_available(), '| transformers', \
transformers.__version__, '| peft', peft.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

echo "== CUDA-only tests"
set +e
$PY -m pytest -q -m cuda tests/igpo_agent/test_cuda.py 2>&1 | tee "$OUT/tests.txt"
tests_rc=${PIPESTATUS[0]}
set -e

echo "== a model of SmolLM2-135M's shape, random weights"
MODEL=/tmp/smollm2-135m-shape
$PY - "$MODEL" <<'PYEOF'
import sys

from igpo_agent.model.loading import build_tiny_model, load_tokenizer

tok = load_tokenizer("smollm2-135m-instruct")
build_tiny_model(tok, sys.argv[1], layers=30, hidden=576, heads=9, kv_heads=3,
                 intermediate=1536, init_std=0.02, seed=0)
print("built", sys.argv[1])
PYEOF

for algo in igpo grpo; do
  echo "== $algo: 3 steps, 4 questions x G=16 = 64 rollouts a step, bf16 on CUDA"
  $PY benchmarks/step.py --config configs/cpu_demo.yaml --steps 3 --model "$MODEL" \
    --extra --algo "$algo" --device cuda --dtype bfloat16 --group_size 16 \
    --questions_per_step 4 --threads 4 2>&1 | tee "$OUT/step_$algo.txt"
done
echo "CUDA tests exit code: $tests_rc"
exit "$tests_rc"
