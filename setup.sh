#!/usr/bin/env bash
# Create .venv with the pinned requirements (about a minute where torch is cached), once.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! command -v "$PYTHON" > /dev/null || [ -d "$PYTHON" ]; then
    echo "setup.sh: $PYTHON is no program that can be run; install Python 3.11 or later, or name one with PYTHON=python3.11 bash setup.sh" >&2
    exit 1
  fi
  # the pinned numpy, scikit-learn, matplotlib and pillow are published for Python 3.11 and later only
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup.sh: $("$PYTHON" --version 2>&1) found; Python 3.11 or later is needed (PYTHON=python3.11 bash setup.sh picks one)" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
