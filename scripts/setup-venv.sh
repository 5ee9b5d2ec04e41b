# Sourced by ./demo.sh and ./test.sh: make .venv with core4nb and the given extras.
# Re-installs only when pyproject.toml (or the extras asked for) changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "core4nb needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
STAMP="$VENV/.core4nb-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) [$EXTRAS]"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV (core4nb${EXTRAS:+[$EXTRAS]}) …"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    # PYTHONWARNINGS: setuptools' build of an editable install prints a box of deprecation warnings
    PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$ROOT${EXTRAS:+[$EXTRAS]}" 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$VENV/bin/python" -c "import core4nb" || { echo "installing core4nb failed" >&2; exit 1; }
    echo "$WANT" > "$STAMP"
fi
