#!/usr/bin/env bash
# The selection study on a multiple-choice benchmark, scored by likelihood: ingest 1,000 / 300 / 500 inputs (ARC
# keeps its own train / dev / test files; MMLU-Pro math's 1,351 questions are cut 500 / 300 / the rest), label
# every split with the committed menu (resumable: run it again after a kill), export the matrices into
# bench/menus/MODEL-TASK/, then `polar select` (the answer rule and every choice frozen on validation, test read
# once) and serve the winners on the test inputs (`polar evaluate --selection`).
# Usage: bash bench/menus/mc_study.sh MODEL TASK [DATA]
#   MODEL: smollm2-135m, gemma3-270m, or any model folder / hub id (its menu file: bench/menus/<name>-TASK/menu.txt)
#   TASK:  arc-easy, arc-challenge or mmlu-pro-math; DATA: the benchmark files (default ../shared/data)
# POLAR_JOBS=N labels with N runs at once (one thread each: on 2 cores, POLAR_JOBS=2).
# A split whose matrix is already under bench/menus/MODEL-TASK/ (the same model, menu, shots and inputs:
# committed.py) is not labeled again, so a study can be labeled across sessions or machines, committing as it goes:
#   POLAR_SPLIT=validation (or test, train) labels that split, exports its matrix and stops;
#   POLAR_SHARD=K/N labels train's shard K of N, exports it as bench/menus/MODEL-TASK/train-KofN and stops.
# The full command then labels only what no committed matrix holds, and joins train's parts (one N for all) into
# the matrix that labeling train whole would write (polar.labeling.reward_matrix.join_parts).
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
have() {  # have FOLDER SPLIT [K/N]: FOLDER holds the matrix of SPLIT (or of its shard) for this model and menu
  [[ -e $1/rewards.parquet ]] || return 1
  python bench/menus/committed.py "$1" --tasks "$tasks/$2.parquet" --menu "$bench/menu.txt" --model "$model" \
    ${3:+--shard "$3"} > /dev/null
}
part() { echo "$bench/train-${1%/*}of${1#*/}"; }  # part K/N: the folder of train's shard K of N
save() {  # save SPLIT: label it whole (resuming) and export its matrix
  label "$1"
  mkdir -p "$bench/$1"
  cp "$menus/$1"/{rewards.parquet,inputs.parquet,settings.json,manifest.json} "$bench/$1/"
}
save_part() {  # save_part K/N: label train's shard K of N and export it alone
  label train "$1"
  python bench/menus/export_part.py "$menus/train" "$tasks/train.parquet" --shard "$1" --to "$(part "$1")"
}
if [[ -n ${POLAR_SPLIT:-} ]]; then
  case $POLAR_SPLIT in
    validation | test | train) have "$bench/$POLAR_SPLIT" "$POLAR_SPLIT" || save "$POLAR_SPLIT" ;;
    *) echo "POLAR_SPLIT=$POLAR_SPLIT: write validation, test or train" >&2; exit 2 ;;
  esac
  exit 0
fi
if [[ -n ${POLAR_SHARD:-} ]]; then  # a train shard alone: the full command joins the parts later
  have "$(part "$POLAR_SHARD")" train "$POLAR_SHARD" || save_part "$POLAR_SHARD"
  exit 0
fi
parts=("$bench"/train-*of*)  # train's committed parts, if it is being labeled in parts
n=""
if [[ -e ${parts[0]} ]]; then n=${parts[0]##*of}; fi
todo() {  # what is left to label, one queue entry per line: validation, test, and train whole, in parts or eighths
  for split in validation test; do have "$bench/$split" "$split" || echo "$split"; done
  have "$bench/train" train && return 0
  if [[ -n $n ]]; then
    for ((k = 0; k < n; k++)); do have "$(part "$k/$n")" train "$k/$n" || echo "train $k/$n"; done
  else
    for k in 0 1 2 3 4 5 6 7; do echo "train $k/8"; done
  fi
}
jobs=${POLAR_JOBS:-1}
if ((jobs > 1)); then
  # POLAR_JOBS labeling runs at once, one thread each, over the queue (each train entry a shard of its own file,
  # so runs never write the same records); what follows exports, labeling nothing twice.
  export model tasks menus bench
  export -f label
  todo | OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xargs -r -P "$jobs" -L 1 bash -c 'label "$@"' _ ||
    echo "a labeling run stopped early (its error is above); labeling what it left, one run at a time" >&2
fi
for split in validation test; do
  have "$bench/$split" "$split" || save "$split"  # everything, or what the runs above left
done
if ! have "$bench/train" train; then
  if [[ -n $n ]]; then
    shards=()
    for ((k = 0; k < n; k++)); do
      have "$(part "$k/$n")" train "$k/$n" || save_part "$k/$n"
      shards+=("$(part "$k/$n")")
    done
    python bench/menus/join_parts.py "$tasks/train.parquet" "$bench/train" "${shards[@]}"
  else
    save train
  fi
fi
selection=data/mc/select/$name-$task  # selectors (M2's weights) and feature caches stay out of git
polar select --train "$bench/train" --validation "$bench/validation" --test "$bench/test" --model "$model" \
  --out "$selection"
out=bench/evaluation/menu-$name-$task
polar evaluate --selection "$selection" --tasks "$tasks/test.parquet" --model "$model" --out "$out"
cp "$selection"/{frozen.json,test.json} "$out/"
