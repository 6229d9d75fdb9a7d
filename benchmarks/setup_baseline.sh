#!/usr/bin/env bash
# Create .venv-dbos with the baseline (DBOS Transact for Python) and asyncpg.
# Idempotent: does nothing when the pinned versions are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV="${BASELINE_VENV:-.venv-dbos}"
DBOS_VERSION="3.4.0"
STAMP="$VENV/.installed-dbos-$DBOS_VERSION"

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import dbos, asyncpg" 2>/dev/null; then
  echo "baseline: $VENV already has dbos==$DBOS_VERSION" >&2
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "need $PYTHON on PATH" >&2; exit 1; }
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
# asyncpg: the baseline runner samples pg_stat_activity with it and measures nothing else.
"$VENV/bin/python" -m pip install -q "dbos==$DBOS_VERSION" "asyncpg>=0.29"
touch "$STAMP"
echo "baseline: installed dbos==$DBOS_VERSION into $VENV" >&2
