#!/usr/bin/env bash
# Fetch CPython's own concurrent.futures tests (Debian's libpython3.11-testsuite) into a cache folder,
# unpacked with dpkg-deb -x: nothing is installed system-wide. tests/test_stdlib_futures.py runs them.
# Prints the path of test_concurrent_futures.py; exits 1 with the reason on stderr when it cannot.
# CORE4NB_STDLIB_TESTS moves the cache (default ~/.cache/core4nb/stdlib-tests).
set -euo pipefail
PACKAGE=libpython3.11-testsuite
CACHE="${CORE4NB_STDLIB_TESTS:-$HOME/.cache/core4nb/stdlib-tests}"
FILE="$CACHE/usr/lib/python3.11/test/test_concurrent_futures.py"
if [ -f "$FILE" ]; then echo "$FILE"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { echo "apt-get and dpkg-deb are needed to fetch Debian's $PACKAGE" >&2; exit 1; }
mkdir -p "$CACHE"
download() { (cd "$CACHE" && apt-get download -q "$PACKAGE") >"$CACHE/apt.log" 2>&1; }
# An old package list names a version the mirror no longer has: refresh it once (root only).
download || { [ "$(id -u)" = 0 ] && apt-get update -q >>"$CACHE/apt.log" 2>&1 && download; } \
    || { echo "apt-get download $PACKAGE failed; see $CACHE/apt.log" >&2; exit 1; }
deb="$(ls -t "$CACHE"/"$PACKAGE"_*.deb | head -1)"
dpkg-deb -x "$deb" "$CACHE"
dpkg-deb -f "$deb" Version >"$CACHE/VERSION"  # Debian's 3.11 may be another patch release than ours
rm -f "$deb"
[ -f "$FILE" ] || { echo "$deb has no test_concurrent_futures.py" >&2; exit 1; }
echo "$FILE"
