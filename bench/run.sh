#!/usr/bin/env bash
# Benchmark jobgate against nginx: install what is missing, build jobgate in
# release mode, then run bench/bench.py with the other arguments given here
# (see bench/README.md, or bench/run.sh --help).
#
# Without --commit, jobgate is built from the working tree into
# build-release/. With --commit REV, the commit REV is exported with git
# archive into build-release/src-REV and built in build-release/commit-REV,
# so edits in the working tree do not change what is measured.
set -euo pipefail
cd "$(dirname "$0")/.."

# The options need neither the packages nor a build.
for arg in "$@"; do
    case "$arg" in
    -h|--help) exec python3 -B bench/bench.py --help ;;
    esac
done

command="bench/run.sh${*:+ $*}"
commit=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --commit) commit="${2:?--commit needs a revision}"; shift 2 ;;
    --commit=*) commit="${1#--commit=}"; shift ;;
    *) args+=("$1"); shift ;;
    esac
done

# Debian packages by the command the benchmark runs. nginx-light is enough;
# an nginx already on the PATH, from any package, is used as it is.
tools=(nginx:nginx-light wrk:wrk gnuplot:gnuplot-nox taskset:util-linux
       node:nodejs python3:python3 perf:linux-perf strace:strace
       valgrind:valgrind callgrind_control:valgrind git:git)

missing=()
for entry in "${tools[@]}"; do
    command -v "${entry%%:*}" >/dev/null || missing+=("${entry#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi
scripts/deps.sh build

if [ -n "$commit" ]; then
    rev="$(git rev-parse --short "$commit^{commit}")"
    src="build-release/src-$rev"
    if [ ! -d "$src" ]; then
        mkdir -p "$src"
        git archive "$rev" | tar -x -C "$src"
    fi
    cmake -S "$src" -B "build-release/commit-$rev" -DCMAKE_BUILD_TYPE=Release \
        -DJOBGATE_TESTS=OFF >/dev/null
    cmake --build "build-release/commit-$rev" -j"$(nproc)" --target jobgate
    args+=(--jobgate "build-release/commit-$rev/jobgate"
           --jobgate-version "$(git describe --always --tags "$rev")")
else
    cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release \
        -DJOBGATE_TESTS=OFF >/dev/null
    cmake --build build-release -j"$(nproc)" --target jobgate
fi

# 1000 client connections need as many descriptors in wrk and in the
# server; bench.py raises the soft limit to the hard one and checks it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BENCH_COMMAND="$command" exec python3 bench/bench.py \
    ${args[@]+"${args[@]}"}
