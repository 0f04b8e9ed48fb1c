#!/usr/bin/env bash
# Set up ueperf in the current Python environment.
#   bash scripts/setup.sh          core package (+ triton, pytest for the dev extra)
#   bash scripts/setup.sh full     also the optional backends: ffcv, deepspeed, faiss, submitit (scripts/install_extras.sh)
# torch is installed first and pinned, so no extra or dependency can pull a different (multi-GB CUDA) build.
# UEPERF_TORCH="torch==2.13.0" (default) chooses the build; on a CUDA machine set it to what you use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  echo "== installing ${UEPERF_TORCH:-torch==2.13.0}"
  $PY -m pip install -q "${UEPERF_TORCH:-torch==2.13.0}"
fi
TORCH_VER=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==${TORCH_VER}" > /tmp/ueperf-torch-constraint.txt
echo "== installing ueperf (editable, dev extra) with torch ${TORCH_VER} pinned"
$PY -m pip install -q setuptools wheel
PIP_CONSTRAINT=/tmp/ueperf-torch-constraint.txt $PY -m pip install -q --no-build-isolation -e ".[dev]"
if [ "${1:-}" = "full" ]; then
  bash scripts/install_extras.sh
fi
echo "== ueperf ready: $($PY -c 'import ueperf; print(ueperf.__version__)')"
