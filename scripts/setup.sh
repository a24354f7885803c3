#!/usr/bin/env bash
# Create .venv with the exact versions of requirements/lock.txt and install curvebench into it.
#
# The lock pins the PyPI builds of torch and torchvision (CUDA builds: they also run on CPUs).
# A site pip configuration that points at local CPU-only torch wheels would swap in a torch that
# torchvision cannot load, so by default this script installs with pip's plain defaults.
# Set CURVEBENCH_KEEP_PIP_CONFIG=1 to keep your pip configuration (e.g. a PyPI mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${CURVEBENCH_KEEP_PIP_CONFIG:-0}" != 1 ]; then
  unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX
  export PIP_CONFIG_FILE=/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/lock.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
.venv/bin/python -c "import torch, torchvision, curvebench; print('curvebench', curvebench.__version__, '| torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
