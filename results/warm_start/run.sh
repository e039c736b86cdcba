#!/usr/bin/env bash
# Warm-start size pilot (issue #20, "a warm start worth starting from"): the demo's SFT recipe
# with 64 (make demo's), 256 and 512 env-built demonstrations (SIZES="64 256" for fewer), each evaluated greedily on the same
# 64 dev questions (stratified by article, eval_seed 0) at the demo's episode limits
# (3 turns, 64 tokens a turn). Dev, because this chooses a setting.
# Usage (from the repo root, after `make install`): bash results/warm_start/run.sh [RUNS_DIR]
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
RUNS=${1:-runs/warm_start}
OUT=results/warm_start
PY=.venv/bin/python
for n in ${SIZES:-64 256 512}; do
  /usr/bin/time -f "%e s wall, %M KiB peak" $PY -m igpo_agent.sft --out "$RUNS/sft-$n" \
    --examples "$n" --max_turns 3 --max_new_tokens 64 --eval_qa default:dev \
    --eval_questions 64 --eval_seed 0 2>&1 | grep -v "it/s]\|s/it]\|step/s]\|s/step]\|q/s]\|s/q]" \
    | tee "$OUT/sft-$n.log"
done
