#!/usr/bin/env bash
# Installs everything quantd needs to build, run and test on Debian 12. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup: installing Debian packages needs root: run this as root, or install sudo" >&2
    exit 1
  fi
  SUDO="sudo"
fi

DEB_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  libtorch-dev libdnnl-dev python3-torch python3-numpy
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev libsqlite3-dev sqlite3 nlohmann-json3-dev
  libcpp-httplib-dev libssl-dev openssl
  clang libclang-rt-dev libomp-dev
  libopenblas0-pthread libjemalloc-dev
  prometheus
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages already installed"
fi

# Node.js drives the third-party gRPC reflection client used by the integration tests.
# QUANTD_SETUP_TEST_TOOLS=0 skips it (an image build needs no test tools).
if [ "${QUANTD_SETUP_TEST_TOOLS:-1}" = "0" ]; then
  echo "setup: done (test tools skipped)"
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  # The package lists may be empty (a fresh container) when the Debian
  # packages above were already there and no update ran.
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
if [ ! -d tests/node/node_modules/grpc-js-reflection-client ]; then
  echo "setup: installing npm test tools into tests/node"
  (cd tests/node && npm install --no-audit --no-fund --loglevel=error)
fi
echo "setup: done"
