#!/usr/bin/env bash
# What moves fine-tuned Flowers-17 rank-1: each fine-tuning lever with 5 repeated splits
# (seeds 42..46), compared, paired, with the default fine-tuning (pipelines/flowers17-
# finetune.toml) and with the plain feature-extraction pipeline (logreg, benchmarks/levers.sh).
#   benchmarks/finetune-levers.sh [CACHE_DIR [OUT_DIR [LEVER...]]]   (default: every lever)
# About 8 minutes per lever on 2 cores (5 fine-tunings); needs ../shared. The README's table
# ("What moves the score", fine-tuning rows) comes from its output.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-/tmp/levers/cache}
OUT=${2:-/tmp/levers/out}
shift $(( $# < 2 ? $# : 2 ))
DATA=../shared/datasets/flowers17
W=../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
FX="${FEATX:-.venv/bin/featx} -q"
declare -A LEVERS=(
  [ft-plain]=""
  [ft-refit]="--set finetune.refit=true"
  [ft-no-augment]="--set finetune.augment=false"
  [ft-crops-2]="--set finetune.crops=2"
  [ft-head-only]="--set finetune.epochs=0"
  [ft-unfreeze-72]="--set finetune.unfreeze=72"
  [ft-cosine]="--set finetune.schedule=cosine"
  [ft-refit-cosine]="--set finetune.refit=true --set finetune.schedule=cosine"
)
ORDER=(ft-plain ft-head-only ft-refit ft-cosine ft-no-augment ft-unfreeze-72 ft-refit-cosine
       ft-crops-2)
run() {  # lever name: 5 fine-tunings, one per split
  local name=$1
  # shellcheck disable=SC2086  # the flags are words
  /usr/bin/time -f "$name: finetune %e s" $FX finetune -p pipelines/flowers17-finetune.toml \
    --data $DATA --weights $W --cache-dir "$CACHE" --set classify.repeats=5 --no-progress \
    ${LEVERS[$name]} --out "$OUT/$name"
}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
RESULT=flowers17-finetune-finetune.json
for name in ft-plain "${names[@]}"; do  # a lever killed halfway runs again (and resumes)
  [ -e "$OUT/$name/$RESULT" ] || run "$name"
done
for name in "${names[@]}"; do
  echo "== $name vs ft-plain"
  [ "$name" = ft-plain ] || $FX runs --compare "$OUT/$name" "$OUT/ft-plain"
  if [ -d "$OUT/plain" ]; then  # against feature extraction + logreg (benchmarks/levers.sh)
    echo "== $name vs plain (logreg)"
    $FX runs --compare "$OUT/$name/$RESULT" \
      "$(ls "$OUT"/plain/*/*-logreg.json)"
  fi
done
