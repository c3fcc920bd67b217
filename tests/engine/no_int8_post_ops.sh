#!/bin/sh
# Checks that quantd runs no int8 oneDNN kernel with post-ops (see
# worker/engine/runtime/onednn_post_ops.h): one best-preset job (calibration,
# trials, quality check) and its artifact served, with oneDNN's verbose log
# on. Exit 77 (skipped) where no int8 kernel runs on oneDNN (QNNPACK CPUs).
#   no_int8_post_ops.sh ACCURACY_BENCH FIXTURES_DIR
set -eu
bench=$1
fixtures=$2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
ONEDNN_VERBOSE=1 "$bench" --fixtures="$fixtures" --configs=best --seeds=0 --test_images=512 >"$log" 2>&1 || {
  tail -20 "$log"
  exit 1
}
int8=$(grep -c '^onednn_verbose,exec,cpu,.*src_u8' "$log" || true)
with_post_ops=$(grep '^onednn_verbose,exec,cpu,.*src_u8' "$log" | grep -c 'attr-post-ops' || true)
echo "int8 oneDNN kernel runs: $int8, with post-ops: $with_post_ops"
if [ "$int8" -eq 0 ]; then
  echo "no int8 kernel ran on oneDNN here"
  exit 77
fi
if [ "$with_post_ops" -ne 0 ]; then
  grep '^onednn_verbose,exec,cpu,.*src_u8' "$log" | grep 'attr-post-ops' | head -3
  exit 1
fi
