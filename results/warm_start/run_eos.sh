#!/usr/bin/env bash
# EOS-ending warm start (answer_eos), the 64-demonstration recipe of results/warm_start/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_WAIT_POLICY=PASSIVE
/usr/bin/time -f "%e s wall, %M KiB peak" .venv/bin/python -m igpo_agent.sft --out "${1:-runs/warm_start}/sft-64-eos" \
  --examples 64 --max_turns 3 --max_new_tokens 64 --eval_qa default:dev \
  --eval_questions 64 --eval_seed 0 --answer_eos 2>&1 | grep -v "it/s]\|s/it]\|step/s]\|s/step]\|q/s]\|s/q]" \
  | tee results/warm_start/sft-64-eos.log
