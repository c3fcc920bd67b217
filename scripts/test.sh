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
ctest --test-dir "$build_dir" --output-on-failure -j"${QUANTD_TEST_JOBS:-2}" "$@"
# The figures the chaos and load tests print (CTest shows output only on failure).
grep -hE '^(chaos|load): |^  [A-Za-z]+: [0-9]+ calls, p50' "$build_dir/Testing/Temporary/LastTest.log" || true
if [ "$#" -eq 0 ] && [ "${QUANTD_SANITIZE:-1}" != "0" ]; then
  scripts/sanitize.sh
fi
