#!/usr/bin/env bash
# Predictor evaluation for one bundled model on disjoint splits: ingest train / validation / test by a hash of
# each question, label the train split (and the test split, for the search oracle), train predictors (two
# embedders, skip-only and loop-only targets, the plain beam order, an out-of-distribution split) and evaluate
# them on the test split against the baselines.
# Usage: bash bench/evaluation/run.sh MODEL TRAIN_PER_LEVEL TEST_PER_LEVEL [SIMULATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1
ntrain=$2
ntest=$3
sims=${4:-32}
export PATH="$PWD/.venv/bin:$PATH"
tasks=data/tasks/bench-$ntrain-$ntest
labels=data/labels/bench-$ntrain-$ntest-$sims/$model
preds=models/predictors/bench/$model
polar ingest --train "$ntrain" --validation 4 --test "$ntest" --seed 0 --out "$tasks"
polar label --model "$model" --tasks "$tasks/train.parquet" --space joint --simulations "$sims" --out "$labels/train"
polar label --model "$model" --tasks "$tasks/test.parquet" --space joint --simulations "$sims" --out "$labels/test"
# The gate the pipeline runs: no validation or test question among the training labels.
polar validate --labels "$labels/train" --out "reports/bench/$model/validation" \
  --heldout "$tasks/validation.parquet" --heldout "$tasks/test.parquet" --no-accept
polar train --labels "$labels/train/labels.jsonl" --embedder backbone:2 --out "$preds/joint"
polar train --labels "$labels/train/labels.jsonl" --embedder minilm --out "$preds/joint-minilm"
polar train --labels "$labels/train/labels.jsonl" --embedder backbone:2 --space skip --out "$preds/skip-only"
polar train --labels "$labels/train/labels.jsonl" --embedder backbone:2 --space loop --out "$preds/loop-only"
polar train --labels "$labels/train/labels.jsonl" --embedder backbone:2 --levels 1-3 --out "$preds/joint-levels-1-3"
# The same predictor decoded with the plain beam order (the identity first whenever the segments' edits disagree).
polar train --labels "$labels/train/labels.jsonl" --embedder backbone:2 --identity-rule marginal --out "$preds/joint-marginal"
polar evaluate --predictor "$preds/joint" --tasks "$tasks/test.parquet" --oracle-labels "$labels/test/labels.jsonl" \
  --other minilm-embedder="$preds/joint-minilm" --other skip-only="$preds/skip-only" --other loop-only="$preds/loop-only" \
  --other marginal-rule="$preds/joint-marginal" \
  --out "bench/evaluation/$model"
# Out of distribution: trained on levels 1-3 only, tested on levels 4-5 (of the same test split).
polar ingest --levels 4-5 --train 1 --validation 1 --test "$ntest" --seed 0 --out "$tasks-L45"
polar evaluate --predictor "$preds/joint-levels-1-3" --tasks "$tasks-L45/test.parquet" \
  --oracle-labels "$labels/test/labels.jsonl" --other all-levels="$preds/joint" --out "bench/evaluation/$model-ood"
