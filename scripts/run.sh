#!/usr/bin/env bash
# Install the build dependencies, build jobgate in release mode and start
# it in the foreground with the shipped configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh build
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DJOBGATE_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target jobgate
exec build/jobgate -c config/jobgate.conf "$@"
