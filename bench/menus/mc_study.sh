#!/usr/bin/env bash
# The selection study on a multiple-choice benchmark, scored by likelihood: ingest 1,000 / 300 / 500 inputs (ARC
# keeps its own train / dev / test files; MMLU-Pro math's 1,351 questions are cut 500 / 300 / the rest), label
# every split with the committed menu (resumable: run it again after a kill), export the matrices into
# bench/menus/MODEL-TASK/, then `polar select` (the answer rule and every choice frozen on validation, test read
# once) and serve the winners on the test inputs (`polar evaluate --selection`).
# Usage: bash bench/menus/mc_study.sh MODEL TASK [DATA]
#   MODEL: smollm2-135m, gemma3-270m, or any model folder / hub id (its menu file: bench/menus/<name>-TASK/menu.txt)
#   TASK:  arc-easy, arc-challenge or mmlu-pro-math; DATA: the benchmark files (default ../shared/data)
# POLAR_JOBS=N labels with N runs at once (one thread each: on 2 cores, POLAR_JOBS=2). Train can also be labeled
# in shards apart, e.g. across machines or days (POLAR_SHARD=K/N labels every N-th input from K and stops; run
# each, then once more without it to merge).
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
label() {  # label SPLIT [SHARD]: one split, or every N-th input of it from K (K/N)
  local shard=()
  if [[ -n ${2:-} ]]; then shard=(--shard "$2"); fi
  polar label --menu "$bench/menu.txt" --scoring likelihood --model "$model" --tasks "$tasks/$1.parquet" \
    --out "$menus/$1" "${shard[@]}"
}
jobs=${POLAR_JOBS:-1}
if [[ -n ${POLAR_SHARD:-} ]]; then  # a train shard alone: merge later
  label train "$POLAR_SHARD"
  exit 0
fi
if ((jobs > 1)); then
  # POLAR_JOBS labeling runs at once, one thread each, over a queue: validation, test, train in eighths (each a
  # shard of its own file, so runs never write the same records); the merge below labels nothing twice.
  export model tasks menus bench
  export -f label
  { echo validation; echo test; for k in 0 1 2 3 4 5 6 7; do echo "train $k/8"; done; } |
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xargs -P "$jobs" -L 1 bash -c 'label "$@"' _ ||
      echo "a labeling run stopped early (its error is above); labeling what it left, one run at a time" >&2
fi
for split in validation test train; do
  label "$split"  # everything, or what the runs above left (a run resumes from any run's records)
  mkdir -p "$bench/$split"
  cp "$menus/$split"/{rewards.parquet,inputs.parquet,settings.json,manifest.json} "$bench/$split/"
done
selection=data/mc/select/$name-$task  # selectors (M2's weights) and feature caches stay out of git
polar select --train "$bench/train" --validation "$bench/validation" --test "$bench/test" --model "$model" \
  --out "$selection"
out=bench/evaluation/menu-$name-$task
polar evaluate --selection "$selection" --tasks "$tasks/test.parquet" --model "$model" --out "$out"
cp "$selection"/{frozen.json,test.json} "$out/"
