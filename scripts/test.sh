#!/usr/bin/env bash
# Install the test dependencies, build, and run every test: the unit tests
# (ctest) and the integration tests (node --test against build/jobgate),
# first in a normal build, then again under AddressSanitizer and
# UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/deps.sh test
scripts/check-source.sh
(cd tests/integration && npm ci --no-audit --no-fund --loglevel=error)

run_suite() {
    local dir=$1
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DJOBGATE_TESTS=ON "$@" \
        >/dev/null
    cmake --build "$dir" -j"$jobs"
    (cd "$dir" && ctest --output-on-failure -j"$jobs")
    JOBGATE_BIN="$PWD/$dir/jobgate" node --test tests/integration/
}

echo "== plain build"
run_suite build

echo "== AddressSanitizer and UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_suite build-sanitize -DJOBGATE_SANITIZE=ON
