#!/usr/bin/env bash
# The selection study on a multiple-choice benchmark, scored by likelihood: ingest 1,000 / 300 / 500 inputs (ARC
# keeps its own train / dev / test files; MMLU-Pro math's 1,351 questions are cut 500 / 300 / the rest), label
# every split with the committed menu (resumable: run it again after a kill), export the matrices into
# bench/menus/MODEL-TASK/, then `polar select` (the answer rule and every choice frozen on validation, test read
# once) and serve the winners on the test inputs (`polar evaluate --selection`).
# Usage: bash bench/menus/mc_study.sh MODEL TASK [DATA]
#   MODEL: smollm2-135m, gemma3-270m, or any model folder / hub id (its menu file: bench/menus/<name>-TASK/menu.txt)
#   TASK:  arc-easy, arc-challenge or mmlu-pro-math; DATA: the benchmark files (default ../shared/data)
# Train can be labeled in shards apart (POLAR_SHARD=K/N labels every N-th input from K; run each, then once more
# without it to merge).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1
task=$2
data=${3:-../shared/data}
name=$(basename "$model")
export PATH="$PWD/.venv/bin:$PATH"
tasks=data/mc/$task
menus=data/mc/menu/$name/$task
bench=bench/menus/$name-$task
case $task in
  arc-easy) polar ingest --task arc-easy --splits files --source "$data/arc/genmc_official/arc_easy" \
              --train 1000 --validation 300 --test 500 --out "$tasks" ;;
  arc-challenge) polar ingest --task arc-challenge --splits files --source "$data/arc/genmc_official/arc_challenge" \
              --train 1000 --validation 300 --test 500 --out "$tasks" ;;
  mmlu-pro-math) polar ingest --task mmlu-pro-math --splits sizes --shots 3 \
              --source "$data/mmlu-pro/test_math_1351.jsonl" --validation 300 --test 500 --out "$tasks" ;;
  *) echo "unknown task $task: arc-easy, arc-challenge or mmlu-pro-math" >&2; exit 2 ;;
esac
for split in validation test train; do
  shard=()
  if [[ $split == train && -n ${POLAR_SHARD:-} ]]; then shard=(--shard "$POLAR_SHARD"); fi
  polar label --menu "$bench/menu.txt" --scoring likelihood --model "$model" --tasks "$tasks/$split.parquet" \
    --out "$menus/$split" "${shard[@]}"
  if [[ ${#shard[@]} -gt 0 ]]; then exit 0; fi  # a shard alone: merge later
  mkdir -p "$bench/$split"
  cp "$menus/$split"/{rewards.parquet,inputs.parquet,settings.json,manifest.json} "$bench/$split/"
done
selection=data/mc/select/$name-$task  # selectors (M2's weights) and feature caches stay out of git
polar select --train "$bench/train" --validation "$bench/validation" --test "$bench/test" --model "$model" \
  --out "$selection"
out=bench/evaluation/menu-$name-$task
polar evaluate --selection "$selection" --tasks "$tasks/test.parquet" --model "$model" --out "$out"
cp "$selection"/{frozen.json,test.json} "$out/"
