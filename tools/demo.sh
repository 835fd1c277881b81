#!/usr/bin/env bash
# sudo ./tools/demo.sh [demo options] — install what is missing, then run the demo:
# curl (plain TCP) talks MPTCP v1 through mptcp-proxy to a Linux native MPTCP server in
# network namespaces, with a handover from link c0 to c1 during the download.
# Exit status 0 only if every check passes; everything it creates is removed.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: must run as root: sudo $0" >&2
    exit 3
fi
./tools/bootstrap
exec .venv/bin/python tools/demo.py "$@"
