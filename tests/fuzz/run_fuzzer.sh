#!/usr/bin/env bash
# Runs one libFuzzer harness for a fixed time from its seed corpus:
#   run_fuzzer.sh FUZZER SEED_CORPUS_DIR SECONDS
# New inputs go to a scratch corpus (the checked-in seeds stay as they are);
# a crash leaves its input as crash-* in the current directory and fails.
# Longer on demand: run_fuzzer.sh build-fuzz/tests/fuzz/dataset_fuzzer tests/fuzz/corpus/dataset_fuzzer 3600
set -euo pipefail
fuzzer="$1" seeds="$2" seconds="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/quantd_fuzz_corpus.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# LibTorch is not instrumented: allocations it makes and frees across the
# boundary, and its global objects, are not ours to report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
"$fuzzer" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
  -print_final_stats=1 "$work" "$seeds"
