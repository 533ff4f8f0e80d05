#!/usr/bin/env bash
# Build jobgate's libFuzzer targets with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer, then run each target for a fixed time on a
# copy of its seed corpus and saved regressions. When a target crashes or
# breaks an invariant, the others still run, the input is kept in the work
# directory and printed, and the script exits 1.
#
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  time per target (default: $FUZZ_SECONDS, or 20).
#            A long run: tests/fuzz/run.sh 3600
#   TARGET   uuid, inspect, entry, config, request or http (default: every
#            target the build has; one left out for a missing module is
#            reported by CMake when it configures).
# Environment:
#   CC              clang to build with (default: clang-14, else clang)
#   FUZZ_BUILD_DIR  build directory (default: build-fuzz in the tree)
#   FUZZ_WORK_DIR   where the corpus copies, logs and crash inputs go
#                   (default: a new directory under ${TMPDIR:-/tmp})
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
fuzz_dir=$root/tests/fuzz
seconds=${1:-${FUZZ_SECONDS:-20}}
[ $# -gt 0 ] && shift
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
cc=${CC:-$(command -v clang-14 || command -v clang || true)}

if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "run.sh: SECONDS must be a positive integer, not \"$seconds\"" >&2
    exit 2
fi
if [ -z "$cc" ]; then
    echo "run.sh: clang not found; install the clang package" >&2
    exit 2
fi

work=${FUZZ_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/jobgate-fuzz.XXXXXX")}
mkdir -p "$work"

# libFuzzer is in libclang-rt-14-dev, which clang only recommends.
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n)\n'`
      `'{ (void)d; (void)n; return 0; }\n' >"$work/probe.c"
if ! "$cc" -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" 2>/dev/null; then
    echo "run.sh: $cc cannot link -fsanitize=fuzzer;" \
        "install libclang-rt-14-dev" >&2
    exit 2
fi

# Maximum input length per target, in bytes: above the longest realistic
# input, above the 4095-byte line limit for config, and for http room for a
# few pipelined requests with bodies up to its 8192-byte limit.
declare -A max_len=([uuid]=256 [inspect]=8192 [entry]=4096 [config]=8192
                    [request]=4096 [http]=16384)

echo "== building in $build with $cc"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER="$cc" -DJOBGATE_FUZZ=ON -DJOBGATE_TESTS=OFF \
    >"$work/configure.log"
grep "fuzz target" "$work/configure.log" || true
if ! cmake --build "$build" -j"$(nproc)" --target fuzz_all \
        >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "run.sh: build failed; is tests/fuzz added to the top-level" \
        "CMakeLists.txt (see tests/fuzz/README.md)?" >&2
    exit 2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for t in uuid inspect entry config request http; do
        [ -x "$build/tests/fuzz/fuzz_$t" ] && targets+=("$t")
    done
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

failed=()
for t in "${targets[@]}"; do
    bin=$build/tests/fuzz/fuzz_$t
    if [ ! -x "$bin" ]; then
        echo "run.sh: no target $t (looked for $bin)" >&2
        failed+=("$t")
        continue
    fi

    dir=$work/$t
    mkdir -p "$dir/corpus" "$dir/crashes"
    cp "$fuzz_dir/corpus/$t/"* "$dir/corpus/"
    for f in "$fuzz_dir/regressions/$t/"*; do
        [ -f "$f" ] && cp "$f" "$dir/corpus/"
    done

    echo "== fuzz_$t for ${seconds}s"
    rc=0
    "$bin" -max_total_time="$seconds" -max_len="${max_len[$t]:-4096}" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -dict="$fuzz_dir/dict/$t.dict" -artifact_prefix="$dir/crashes/" \
        "$dir/corpus" >"$dir/log" 2>&1 || rc=$?

    # The last status line: executions, coverage, features, corpus size.
    grep -E '^#[0-9]+' "$dir/log" | tail -n 1 || true
    grep -E '^stat::number_of_executed_units' "$dir/log" || true
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        grep -v -E '^#[0-9]+' "$dir/log" | tail -n 40 >&2
        for crash in "$dir/crashes/"*; do
            [ -f "$crash" ] || continue
            echo "fuzz_$t: input $crash; minimise it with" >&2
            echo "  $bin -minimize_crash=1 -max_total_time=60" \
                "-exact_artifact_path=$crash.min $crash" >&2
            echo "then copy it to tests/fuzz/regressions/$t/" >&2
        done
    fi
done

echo "work directory (logs, grown corpora, crash inputs): $work"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "run.sh: ${#targets[@]} targets ran ${seconds}s each without a finding"
