#!/usr/bin/env bash
# Set up ueperf in the current Python environment.
#   bash scripts/setup.sh          core package: torch, numpy, pillow, tqdm, matplotlib, the C++ op (csrc/),
#                                  and the dev extra: pytest, pytest-timeout, scikit-learn, triton
#   bash scripts/setup.sh full     also the optional backends: ffcv, deepspeed, faiss-cpu, submitit
#                                  (scripts/install_extras.sh; needs root or sudo for apt)
# torch is installed first and pinned, so no extra or dependency can pull a different (multi-GB CUDA) build.
# UEPERF_TORCH="torch==2.13.0" (default) chooses the build; on a CUDA machine set it to what you use.
# A rerun skips the editable install (and its ~30 s C++ build) when nothing it depends on changed
# (pyproject.toml, setup.py, csrc/, the torch version, the Python): UEPERF_SETUP_FORCE=1 redoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Versions are read from the installed metadata, never by importing torch: importing torch before
# numpy is installed prints NumPy's "Failed to initialize NumPy" warning.
dist_version() { $PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null; }

if ! dist_version torch >/dev/null; then
  echo "== installing ${UEPERF_TORCH:-torch==2.13.0}"
  $PY -m pip install -q "${UEPERF_TORCH:-torch==2.13.0}"
fi
TORCH_VER=$(dist_version torch)
TORCH_VER=${TORCH_VER%%+*}
CONSTRAINT=$(mktemp /tmp/ueperf-torch-constraint.XXXXXX)
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==${TORCH_VER}" > "$CONSTRAINT"
# numpy before anything imports torch (setup.py imports torch to build the C++ op)
if ! dist_version numpy >/dev/null; then
  echo "== installing numpy"
  PIP_CONSTRAINT="$CONSTRAINT" $PY -m pip install -q "numpy>=1.24"
fi

# What the editable install depends on: when none of it changed since the last successful
# install (and the package and its C++ op are still there), the install is skipped.
STAMP=build/.ueperf-setup-stamp
want=$({ $PY -c "import sys; print(sys.executable, sys.version)"; echo "torch ${TORCH_VER} build_ext ${UEPERF_BUILD_EXT:-1}";
         cat pyproject.toml setup.py csrc/* 2>/dev/null; } | sha256sum | cut -d' ' -f1)
ops_built() {  # every csrc/<op>.cpp has its ueperf/_C_<op>*.so (or the build is switched off)
  [ "${UEPERF_BUILD_EXT:-1}" = "0" ] && return 0
  for src in csrc/*.cpp; do
    [ -e "$src" ] || continue
    op=$(basename "$src" .cpp)
    compgen -G "ueperf/_C_${op}*.so" >/dev/null || return 1
  done
}
if [ "${UEPERF_SETUP_FORCE:-0}" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && dist_version ueperf >/dev/null && ops_built; then
  echo "== ueperf (editable, dev extra) is up to date with torch ${TORCH_VER}: skipped the install (UEPERF_SETUP_FORCE=1 redoes it)"
else
  echo "== installing ueperf (editable, dev extra) with torch ${TORCH_VER} pinned"
  $PY -m pip install -q setuptools wheel
  PIP_CONSTRAINT="$CONSTRAINT" $PY -m pip install -q --no-build-isolation -e ".[dev]"
  mkdir -p build && echo "$want" > "$STAMP"
fi
if [ "${1:-}" = "full" ]; then
  bash scripts/install_extras.sh
fi
echo "== ueperf ready: $($PY -c 'import ueperf; print(ueperf.__version__)')"
