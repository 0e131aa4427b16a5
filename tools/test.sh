#!/usr/bin/env bash
# Sets up a Debian 12 machine, builds everything and runs the test suite.
# Usage: bash tools/test.sh   (as root, or a user with sudo)
# Environment: BUILD_DIR (default build), JOBS (default: number of cores),
#              EORA_CUDA (AUTO/ON/OFF, default AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

bash tools/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEORA_CUDA="${EORA_CUDA:-AUTO}"
cmake --build "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$JOBS" --timeout 900
