#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, integration, engine, chaos, load)
# with CTest, then the hardening run (scripts/sanitize.sh: ASan + UBSan build,
# unit and integration tests under it, a fuzzing smoke of each harness).
# Extra arguments go to ctest and skip the hardening run, e.g.
#   scripts/test.sh -R Integration
# QUANTD_SANITIZE=0 skips the hardening run too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh
build_dir="${QUANTD_BUILD_DIR:-build}"
# Two tests at a time (QUANTD_TEST_JOBS): the suite passes so on this 2-core
# machine, in about half the serial time.
# The avx2/ repeat caps oneDNN at AVX2 to reproduce an AVX2-only CPU's
# kernels on an AVX-512 one; on a CPU without AVX-512 it is the same run
# twice (about 5 min of test time), so it is left out there.
filters=()
if [ "$#" -eq 0 ] && ! grep -q -w avx512f /proc/cpuinfo; then
  echo "test: no AVX-512 on this CPU: the avx2/ repeat would run the native tests again; skipped" >&2
  filters=(-LE avx2)
fi
ctest --test-dir "$build_dir" --output-on-failure -j"${QUANTD_TEST_JOBS:-2}" "${filters[@]}" "$@"
# The figures the chaos and load tests print (CTest shows output only on failure).
grep -hE '^(chaos|load): |^  [A-Za-z]+: [0-9]+ calls, p50' "$build_dir/Testing/Temporary/LastTest.log" || true
if [ "$#" -eq 0 ] && [ "${QUANTD_SANITIZE:-1}" != "0" ]; then
  scripts/sanitize.sh
fi
