#!/usr/bin/env bash
# Quick start 2: the whole test suite (lint, store contract on SQLite and the
# MongoDB wire-protocol server, worker processes, executor, magics, notebooks,
# the browser test). Does its own set-up: venv, packages, Chromium when missing.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-venv.sh "test"
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Chromium for the browser test (apt-get) …"
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/tmp/core4nb-apt.log 2>&1 \
            || { echo "apt-get install chromium failed; see /tmp/core4nb-apt.log" >&2; exit 1; }
    else
        echo "note: /usr/bin/chromium missing and not root: the browser test will be skipped" >&2
    fi
fi
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
