#!/usr/bin/env bash
# The hardening run: builds everything with clang under AddressSanitizer +
# UndefinedBehaviorSanitizer (build-sanitize/, QUANTD_FUZZ=ON), runs the unit
# tests and each libFuzzer harness for QUANTD_FUZZ_SECONDS (default 30) from
# its seed corpus in tests/fuzz/corpus, then the integration tests.
# Extra arguments go to ctest. Longer fuzzing on demand:
#   tests/fuzz/run_fuzzer.sh build-sanitize/tests/fuzz/dataset_fuzzer tests/fuzz/corpus/dataset_fuzzer 3600
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
build_dir="${QUANTD_SANITIZE_BUILD_DIR:-build-sanitize}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
CC=clang CXX=clang++ cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DQUANTD_FUZZ=ON -DQUANTD_FUZZ_SECONDS="${QUANTD_FUZZ_SECONDS:-30}" -DQUANTD_TEST_WHOLE_BINARIES=ON
cmake --build "$build_dir" -j"${QUANTD_BUILD_JOBS:-2}"

# LibTorch, gRPC and the other system libraries are not instrumented: leaks
# they keep for the process lifetime and allocations that cross into them are
# not ours to report. A failed allocation throws std::bad_alloc, as in
# production. Everything else stops the test at the first report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# The accuracy tests (not built here) and the AVX2 repeat are the same code
# as the unit tests on more data; chaos and load tests run in the normal
# build (scripts/test.sh), where their timings mean something. So does the
# accuracy-aware job's end-to-end test: under ASan it is almost two minutes
# of LibTorch, and its code of ours runs here in AccuracyTuningTest (the
# search), job_conversion_test and the job_request_fuzzer (the job spec).
# Unit tests (each binary in one process, QUANTD_TEST_WHOLE_BINARIES) and
# fuzzing smokes two at a time; the integration tests one test at a time,
# since their servers' timeouts assume a machine they do not share with
# another sanitized test.
ctest --test-dir "$build_dir" --output-on-failure -j"${QUANTD_TEST_JOBS:-2}" -LE 'avx2|integration' \
  -E 'Chaos|LoadTest' "$@"
ctest --test-dir "$build_dir" --output-on-failure -L integration -LE 'avx2' \
  -E 'Chaos|LoadTest|AccuracyAwareJob' "$@"
echo "sanitize: done ($build_dir)"
