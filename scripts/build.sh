#!/usr/bin/env bash
# Sets up a Debian 12 machine (scripts/setup.sh) and builds everything into
# build/ with Ninja. Environment: QUANTD_BUILD_DIR (default build),
# QUANTD_BUILD_JOBS (default 2), CMAKE_BUILD_TYPE (default RelWithDebInfo).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

build_dir="${QUANTD_BUILD_DIR:-build}"
# ccache hits survive a clone in another folder (CI builds a fresh clone).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}"
cmake --build "$build_dir" -j"${QUANTD_BUILD_JOBS:-2}"
echo "build: done ($build_dir)"
