#!/usr/bin/env bash
# RL recipe pilots (issue #20, "a signal that points somewhere"): RL from the 512-demonstration
# warm start of results/warm_start, each arm evaluated greedily on the same 64 stratified dev
# questions as the warm-start pilot (eval_seed 0, so "before" reproduces eval-512.jsonl) and
# probed on 16 training questions x G at steps 0, 8 and 16. Dev, because this chooses settings.
# Usage (repo root, after `make install`):
#   bash results/rl_pilots/run.sh WARM_START_DIR RUNS_DIR ARM [extra train flags...]
# ARM names the run (runs land in RUNS_DIR/ARM; metrics, eval and probe records are copied to
# results/rl_pilots/ARM/). Every arm starts from the common flags below; extra flags override.
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
WARM=$1; RUNS=$2; ARM=$3; shift 3
OUT=results/rl_pilots/$ARM
mkdir -p "$OUT"
PY=.venv/bin/python
echo "bash results/rl_pilots/run.sh $WARM $RUNS $ARM $*" > "$OUT/command.txt"
/usr/bin/time -f "%e s wall, %M KiB peak" $PY -m igpo_agent.train --config configs/cpu_demo.yaml \
  --init_adapter "$WARM" --run_dir "$RUNS/$ARM" \
  --eval_qa default:dev --eval_questions 64 --eval_seed 0 \
  --probe_every 8 --probe_questions 16 --probe_seed 0 \
  --steps 16 --save_every 8 --dump_rollouts_every 4 --tensorboard false \
  "$@" 2>&1 | grep -v "it/s]\|s/it]\|step/s]\|s/step]\|q/s]\|s/q]" | tee "$OUT/train.log"
cp "$RUNS/$ARM/metrics.jsonl" "$RUNS/$ARM/config.yaml" "$OUT/"
mkdir -p "$OUT/eval" "$OUT/probe"
cp "$RUNS/$ARM"/eval/*.jsonl "$OUT/eval/" 2>/dev/null || true
cp "$RUNS/$ARM"/probe/*.jsonl "$OUT/probe/" 2>/dev/null || true
