#!/usr/bin/env bash
# The evaluation of issue #4 for one bundled model: label a train split, train predictors (two embedders,
# skip-only and loop-only targets, an out-of-distribution split), and evaluate them on the diagnosis
# inputs (held out: another split) against the baselines and the search oracle.
# Usage: bash bench/evaluation/run.sh MODEL TRAIN_PER_LEVEL TEST_PER_LEVEL [SIMULATIONS]
# Needs the diagnosis labels of the same model (bash bench/diagnosis/run.sh MODEL TEST_PER_LEVEL SIMULATIONS).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1
ntrain=$2
ntest=$3
sims=${4:-32}
export PATH="$PWD/.venv/bin:$PATH"
labels=data/labels/train-$ntrain-$sims/$model/joint
preds=models/predictors/bench/$model
oracle=data/labels/diag-$ntest-$sims/$model/joint/labels.jsonl
polar ingest --n "$ntrain" --seed 0 --split train --out "data/tasks/arith-train-$ntrain.parquet"
polar label --model "$model" --tasks "data/tasks/arith-train-$ntrain.parquet" --space joint --simulations "$sims" --out "$labels"
polar train --labels "$labels/labels.jsonl" --embedder backbone:2 --out "$preds/joint"
polar train --labels "$labels/labels.jsonl" --embedder minilm --out "$preds/joint-minilm"
polar train --labels "$labels/labels.jsonl" --embedder backbone:2 --space skip --out "$preds/skip-only"
polar train --labels "$labels/labels.jsonl" --embedder backbone:2 --space loop --out "$preds/loop-only"
polar train --labels "$labels/labels.jsonl" --embedder backbone:2 --levels 1-3 --out "$preds/joint-levels-1-3"
# The same predictor decoded with the plain beam order (the identity first whenever the segments' edits disagree).
polar train --labels "$labels/labels.jsonl" --embedder backbone:2 --identity-rule marginal --out "$preds/joint-marginal"
polar evaluate --predictor "$preds/joint" --tasks "data/tasks/arith-diag-$ntest.parquet" --oracle-labels "$oracle" \
  --other minilm-embedder="$preds/joint-minilm" --other skip-only="$preds/skip-only" --other loop-only="$preds/loop-only" \
  --other marginal-rule="$preds/joint-marginal" \
  --out "bench/evaluation/$model"
# Out of distribution: trained on levels 1-3 only, tested on levels 4-5.
polar ingest --levels 4-5 --n "$ntest" --seed 0 --split test --out "data/tasks/arith-diag-$ntest-L45.parquet"
polar evaluate --predictor "$preds/joint-levels-1-3" --tasks "data/tasks/arith-diag-$ntest-L45.parquet" \
  --oracle-labels "$oracle" --other all-levels="$preds/joint" --out "bench/evaluation/$model-ood"
