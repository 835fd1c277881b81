#!/usr/bin/env bash
# tools/test.sh [--strict] [pytest args...] — bootstrap, then run the test suite (tests/).
#
# Run as root (sudo) so the interop tests can build network namespaces; without root the
# bootstrap is skipped (an existing .venv is used) and interop tests skip.
# --strict (CI): MPTCP_PROXY_STRICT=1, so a skipped interop test counts as a failure.
# The whole run is bounded by MPTCP_PROXY_TEST_TIMEOUT seconds (default 4800, CI allows 5400);
# pytest then gets SIGINT so fixtures still tear their namespaces down.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

if [ "${1:-}" = "--strict" ]; then
    shift
    export MPTCP_PROXY_STRICT=1
fi

if [ "$(id -u)" -eq 0 ]; then
    ./tools/bootstrap
elif [ -x .venv/bin/python ]; then
    echo "test.sh: not root: skipping bootstrap, interop tests will skip" >&2
else
    echo "test.sh: ERROR: not root and no .venv: run 'sudo $0'" >&2
    exit 1
fi

# No path arguments: pytest takes testpaths (tests/) from pyproject.toml.
exec timeout -s INT -k 60 "${MPTCP_PROXY_TEST_TIMEOUT:-4800}" \
    .venv/bin/python -m pytest -rfEs "$@"
