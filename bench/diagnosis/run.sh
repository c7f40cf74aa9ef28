#!/usr/bin/env bash
# The diagnosis of issue #3: label the synthetic levels' test split with skip-only, loop-only and joint search
# for a bundled model, then write the report. Usage: bash bench/diagnosis/run.sh MODEL [PER_LEVEL] [SIMULATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-smollm2-135m}
n=${2:-8}
sims=${3:-32}
export PATH="$PWD/.venv/bin:$PATH"
tasks=data/tasks/bench-$n
# Test inputs of the hash split (never a training question); the train split is drawn by bench/evaluation.
polar ingest --train 1 --validation 1 --test "$n" --seed 0 --out "$tasks"
for space in skip loop joint; do
  polar label --model "$model" --tasks "$tasks/test.parquet" --space "$space" \
    --simulations "$sims" --out "data/labels/diag-$n-$sims/$model/$space"
done
polar diagnose --labels "data/labels/diag-$n-$sims/$model" --out "bench/diagnosis/$model"
