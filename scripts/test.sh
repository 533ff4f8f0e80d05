#!/usr/bin/env bash
# Install the test dependencies, build, and run every test: the unit tests
# and fuzz-seed replays (ctest) and the integration tests (node --test
# against the built jobgate), first in a normal build, then once more with
# two worker loops, then with jobgate under valgrind memcheck, then a short
# run of every libFuzzer target, and last everything again in a build with
# AddressSanitizer and UndefinedBehaviorSanitizer, with one worker loop and
# with two. FUZZ_SECONDS sets the time per fuzz target
# (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/deps.sh test
scripts/check-source.sh
(cd tests/integration && npm ci --no-audit --no-fund --loglevel=error)

build_and_unit_test() {
    local dir=$1
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DJOBGATE_TESTS=ON "$@" \
        >/dev/null
    cmake --build "$dir" -j"$jobs"
    (cd "$dir" && ctest --output-on-failure -j"$jobs")
}

integration_test() {
    JOBGATE_BIN="$PWD/$1/jobgate" node --test tests/integration/
}

echo "== release build, as scripts/run.sh and the benchmarks make it"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DJOBGATE_TESTS=OFF \
    >/dev/null
cmake --build build-release -j"$jobs" --target jobgate

echo "== plain build"
build_and_unit_test build
integration_test build

echo "== integration tests with workers = 2"
JG_TEST_WORKERS=2 integration_test build

echo "== integration tests with jobgate under valgrind memcheck"
JG_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
    integration_test build

echo "== short fuzzing run"
tests/fuzz/run.sh "${FUZZ_SECONDS:-10}"

echo "== AddressSanitizer and UndefinedBehaviorSanitizer"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
build_and_unit_test build-sanitize -DJOBGATE_SANITIZE=ON
integration_test build-sanitize
JG_TEST_WORKERS=2 integration_test build-sanitize
