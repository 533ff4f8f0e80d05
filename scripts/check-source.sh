#!/usr/bin/env bash
# Reject calls that are unbounded or locale-dependent, and unmarked gaps,
# in jobgate's C sources. Run by scripts/test.sh before the build.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
banned='\b(strcpy|strcat|sprintf|vsprintf|gets|atoi|atol|atoll|strtok|asctime|ctime|localtime|gmtime|tmpnam)[[:space:]]*\('
if grep -nE "$banned" src/*.c include/jobgate/*.h; then
    echo "check-source: use a bounded, reentrant call instead of the ones above" >&2
    status=1
fi
if grep -nE '\b(XXX|FIXME)\b' src/*.c include/jobgate/*.h; then
    echo "check-source: mark a known gap with NOTE: or TODO: and its risk" >&2
    status=1
fi
exit $status
