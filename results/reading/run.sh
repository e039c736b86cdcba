#!/usr/bin/env bash
# Reading pilots (issue #20, "reward the reading"): the 512-demonstration warm start evaluated greedily on
# the same 64 stratified dev questions, varying only what the agent reads. Usage: bash results/reading/run.sh WARM_START
set -euo pipefail
export OMP_WAIT_POLICY=PASSIVE
W=$1
for v in "base:" "words100:--doc_max_words 100" "top5:--top_k 5"; do
  n=${v%%:*}; f=${v#*:}
  .venv/bin/python -m igpo_agent.evaluate --adapter "$W" --qa default:dev --questions 64 --eval_seed 0 --max_turns 3 \
    --max_new_tokens 64 $f --out "runs/reading/$n" 2>&1 | grep -v "it/s]\|s/it]\|q/s]\|s/q]" > results/reading/eval-$n.log
  cp "runs/reading/$n/episodes.jsonl" results/reading/episodes-$n.jsonl
done
