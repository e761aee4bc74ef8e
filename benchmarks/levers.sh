#!/usr/bin/env bash
# What moves Flowers-17 rank-1: every lever with 5 repeated splits (seeds 42..46), each
# compared, paired, with the plain pipeline (MobileNetV2 ImageNet features, logreg).
#   benchmarks/levers.sh [CACHE_DIR [OUT_DIR [LEVER...]]]     (default: every lever)
# About 25 minutes on 2 cores (extraction at 6 resolutions); needs ../shared. The README's
# table ("What moves the score") comes from its output.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-/tmp/levers/cache}
OUT=${2:-/tmp/levers/out}
shift $(( $# < 2 ? $# : 2 ))
DATA=../shared/datasets/flowers17
W=../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
FX=".venv/bin/featx -q"
LAYERS='backbone.layer=block_13_expand_relu,out_relu'
declare -A LEVERS=(
  [plain]=""
  [input-288]="--input-size 288" [input-320]="--input-size 320"
  [input-384]="--input-size 384" [input-448]="--input-size 448"
  [resize-crop]="--set backbone.resize=crop" [resize-pad]="--set backbone.resize=pad"
  [flip]="--set backbone.flip=true"
  [normalize-l2]="--set classify.normalize=l2" [normalize-power]="--set classify.normalize=power"
  [normalize-pca_whiten]="--set classify.normalize=pca_whiten"
  [layers]="--set $LAYERS"
  [layers-power]="--set $LAYERS --set classify.normalize=power"
  [input-384-power]="--input-size 384 --set classify.normalize=power"
  [input-384-layers-power]="--input-size 384 --set $LAYERS --set classify.normalize=power"
  [layers3-power]="--set backbone.layer=block_6_expand_relu,block_13_expand_relu,out_relu --set classify.normalize=power"
  [best]="-p pipelines/flowers17-best.toml"
  [best-ensemble]="-p pipelines/flowers17-best.toml --set classify.classifiers=logreg,linear_svm,rbf_svm --set classify.ensemble=true"
)
ORDER=(plain input-288 input-320 input-384 input-448 resize-crop resize-pad flip normalize-l2
       normalize-power normalize-pca_whiten layers layers-power input-384-power
       input-384-layers-power layers3-power best best-ensemble)
run() {  # lever name: extract (a cache hit after the first time), then classify 5 splits
  local name=$1
  # shellcheck disable=SC2086  # the flags are words
  set -- -p pipelines/flowers17.toml --data $DATA --weights $W --cache-dir "$CACHE" \
    --set classify.classifiers=logreg ${LEVERS[$name]}
  $FX extract "$@" --no-progress >/dev/null
  /usr/bin/time -f "$name: classify %e s" $FX classify "$@" --repeats 5 --out "$OUT/$name"
}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
for name in plain "${names[@]}"; do
  [ -d "$OUT/$name" ] || run "$name"
done
for name in "${names[@]}"; do
  [ "$name" = plain ] && continue
  echo "== $name vs plain"
  $FX runs --compare "$OUT/$name" "$OUT/plain"
  for e in "$OUT/$name"/*/*-ensemble.json; do  # an ensemble against plain's logreg
    [ -e "$e" ] && $FX runs --compare "$e" "$(ls "$OUT"/plain/*/*-logreg.json)"
  done
done
