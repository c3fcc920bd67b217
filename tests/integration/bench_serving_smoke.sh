#!/usr/bin/env bash
# scripts/bench_serving.sh end to end with short rows (0.2 s) and one paired
# round: two real quantd, a real job each, every row of the table, no errors.
# Its figures are #11's evidence, so the script and quantd-serving-bench must
# keep running; the figures themselves mean nothing at this length.
#   bench_serving_smoke.sh SOURCE_DIR BUILD_DIR FIXTURES_DIR
set -euo pipefail
source_dir="$1"
build_dir="$2"
fixtures="$3"
out="$(QUANTD_BUILD_DIR="$build_dir" QUANTD_BENCH_SECONDS=0.2 QUANTD_BENCH_ROUNDS=1 QUANTD_BENCH_ROUND_SECONDS=0.2 \
  "$source_dir/scripts/bench_serving.sh" "$fixtures")"
echo "$out"
fail() {
  echo "bench_serving_smoke: $1" >&2
  exit 1
}
for want in "in-process batch 256" "gRPC ModelInfer batch 1, dynamic batching, async clients" \
  "gRPC ModelInfer batch 1, no batching" "REST JSON infer batch 1" "16 clients, dynamic batching: " \
  "gRPC batch-1 p50 at 1 client: " "latency ratio floor: " "1 paired rounds" "target >= 0.60: met in " \
  "16 callback-API clients, dynamic batching vs in-process batch 256: " "in turns of 25 requests" \
  "the 1 rounds as one run: "; do
  grep -qF -- "$want" <<<"$out" || fail "no '$want' in the output"
done
grep -qx "errors: 0" <<<"$out" || fail "requests failed (want 'errors: 0')"
# quantd is linked with jemalloc (CMake's QUANTD_JEMALLOC; setup.sh installs it).
grep -qF "server allocator jemalloc" <<<"$out" || fail "quantd does not run on jemalloc"
# With its oversize arena off (server/jemalloc_options.cc): FP32 passes on
# large batches otherwise page-fault their activations in again every time.
grep -qF "oversize_threshold=0 " <<<"$out" || fail "quantd's jemalloc runs with its oversize arena"
