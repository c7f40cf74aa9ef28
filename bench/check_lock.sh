#!/usr/bin/env bash
# Reproduce by hash: a fresh clone of this repository's HEAD, the README's set-up, the main job, then
#   git diff --exit-code dvc.lock   (every hash the committed lock records, reproduced)
#   dvc status                      (nothing to act on)
# Too long for CI's test command (about 12 minutes on 2 cores), so it is run by hand before a dvc.lock is committed:
#   bash bench/check_lock.sh [CLONE_DIR]        (default: a new temporary folder; kept, with its log, for a look)
# Exit 0 when both hold; otherwise the diff or the status is printed and the exit code is 1.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d)/polar}
git clone -q "$src" "$dest"
cd "$dest"
start=$(date +%s)
bash .ci/setup
setup=$(date +%s)
.venv/bin/polar pipeline > pipeline.log 2>&1 || { tail -40 pipeline.log; echo "check_lock: the main job failed" >&2; exit 1; }
done_at=$(date +%s)
echo "check_lock: set-up $((setup - start)) s, main job $((done_at - setup)) s, in $dest"
status=$(PATH="$dest/.venv/bin:$PATH" dvc status)
ok=0
if ! git diff --exit-code --stat dvc.lock; then
  git diff dvc.lock | head -60
  echo "check_lock: dvc.lock differs from the committed one" >&2
  ok=1
fi
if [ "$status" != "Data and pipelines are up to date." ]; then
  echo "$status"
  echo "check_lock: dvc status has something to report" >&2
  ok=1
fi
[ "$ok" = 0 ] && echo "check_lock: dvc.lock reproduced by hash; dvc status: $status"
exit "$ok"
