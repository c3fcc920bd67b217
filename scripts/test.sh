#!/usr/bin/env bash
# Sets up, builds and runs every test (unit, integration, engine) with CTest.
# Extra arguments go to ctest, e.g. scripts/test.sh -R Integration
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh
build_dir="${QUANTD_BUILD_DIR:-build}"
ctest --test-dir "$build_dir" --output-on-failure "$@"
