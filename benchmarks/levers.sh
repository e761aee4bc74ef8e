#!/usr/bin/env bash
# What moves Flowers-17 rank-1: every lever with 5 repeated splits (seeds 42..46), each
# compared, paired, with the plain pipeline. Usage: benchmarks/levers.sh CACHE_DIR OUT_DIR
# (about 15 minutes on 2 cores; needs ../shared). The README's table comes from its output.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-/tmp/levers/cache}
OUT=${2:-/tmp/levers/out}
DATA=../shared/datasets/flowers17
W=../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
FX=".venv/bin/featx -q"
run() {  # name, then featx flags
  local name=$1; shift
  $FX extract -p pipelines/flowers17.toml --data $DATA --weights $W --cache-dir "$CACHE" \
    --no-progress "$@" >/dev/null
  /usr/bin/time -f "$name: classify %e s" $FX classify -p pipelines/flowers17.toml --data $DATA \
    --weights $W --cache-dir "$CACHE" --classifiers logreg --repeats 5 --out "$OUT/$name" "$@"
}
run plain
for s in 288 320 384 448; do run "input-$s" --input-size $s; done
run resize-crop --set backbone.resize=crop
run resize-pad --set backbone.resize=pad
run flip --set backbone.flip=true
for n in l2 power pca_whiten; do run "normalize-$n" --set classify.normalize=$n; done
run layers --set 'backbone.layer=block_13_expand_relu,out_relu'
run best --input-size 448 --set backbone.flip=true --set classify.normalize=power
for d in "$OUT"/*/; do
  name=$(basename "$d")
  [ "$name" = plain ] && continue
  echo "== $name vs plain"
  $FX runs --compare "$d" "$OUT/plain"
done
