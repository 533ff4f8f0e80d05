#!/usr/bin/env bash
# Install the Debian 12 packages jobgate needs. "build" installs what the
# daemon needs to build and run; "test" adds the unit-test library, curl,
# Node.js with npm for the integration tests, and clang for the sanitizers.
set -euo pipefail

build_packages=(build-essential cmake pkg-config libevent-dev
                libcurl4-openssl-dev liblmdb-dev libjsmn-dev libssl-dev)
test_packages=(libcmocka-dev curl lmdb-utils nodejs npm clang libclang-rt-14-dev
               valgrind)

case "${1:-build}" in
build) wanted=("${build_packages[@]}") ;;
test) wanted=("${build_packages[@]}" "${test_packages[@]}") ;;
*) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$pkg")
done
# Node.js may come from elsewhere than Debian's package; any node and npm do.
if command -v node >/dev/null && command -v npm >/dev/null; then
    filtered=()
    for pkg in "${missing[@]}"; do
        [[ $pkg == nodejs || $pkg == npm ]] || filtered+=("$pkg")
    done
    missing=("${filtered[@]+"${filtered[@]}"}")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
