#!/usr/bin/env bash
# Install ueperf's optional backends: FFCV (beton loader), DeepSpeed (ZeRO), faiss (ACM metric),
# submitit (sweeps on SLURM: python -m ueperf.sweep --launcher slurm).
#
# Usage (as root, or a user with sudo, on Debian 12 with the project's Python and torch already
# installed):   bash scripts/install_extras.sh          PYTHON=/path/to/python bash scripts/...
# Idempotent: packages already present are left as they are; re-running costs a few seconds.
# torch and numpy stay at their installed versions: every pip step runs with a constraints file
# pinning both to what is installed (so no extra can pull a new torch or a different numpy).
#
# Verified 2026-11-24, Debian 12.11, CPython 3.11.7, torch 2.13.0+cpu, numpy 2.4.6, 2 cores.
# Wall times: apt steps on this machine; pip steps in a clean venv (torch + numpy only) with
# PIP_NO_CACHE_DIR=1, so ffcv was built from its sdist:
#   step                                          wall time   versions installed
#   apt-get update                                   11 s
#   apt-get install --no-install-recommends          33 s     libturbojpeg0-dev 1:2.1.5-2,
#     libturbojpeg0-dev libopencv-dev pkg-config g++          libopencv-dev 4.6.0+dfsg-12
#                                                             (216 packages with dependencies)
#   pip ffcv==1.0.2 pillow (sdist, C++ build)      41-51 s    ffcv 1.0.2, numba 0.68.1,
#                                                             llvmlite 0.50.0, opencv-python
#                                                             5.0.0.93, pytorch-pfn-extras 0.9.0,
#                                                             fastargs 1.2.0, assertpy 1.1,
#                                                             terminaltables 3.1.10, psutil 7.2.2
#   DS_BUILD_OPS=0 pip deepspeed==0.19.8           24-28 s    deepspeed 0.19.8, hjson 3.1.0,
#                                                             msgpack 1.2.4, ninja 1.13.2,
#                                                             einops 0.8.2, py-cpuinfo 9.0.0
#   pip faiss-cpu==1.15.1                           2-3 s     faiss-cpu 1.15.1
#   verify imports                                 11-15 s    (ffcv's import loads numba/LLVM)
#   a re-run with everything present                 12 s     (the import check only)
#
# What ffcv 1.0.2 needs to build: its setup.py runs `pkg-config --cflags --libs opencv4` (or
# `opencv`) and `pkg-config ... libturbojpeg` and compiles one C++ file (libffcv/libffcv.cpp)
# that links OpenCV and libturbojpeg. So: pkg-config, a C++ compiler, libopencv-dev (the
# opencv4.pc file and headers) and libturbojpeg0-dev. Without libopencv-dev the sdist fails at
# metadata time with "RuntimeError: Could not find required package: opencv."
# ffcv imports PIL without declaring pillow; it also does `from distutils.log import warn`
# (fine on Python 3.11; on 3.12+ distutils comes only from setuptools, so keep it installed).
# numpy 2.x works: ffcv 1.0.2 uses no removed numpy aliases, and numba 0.68 supports numpy
# < 2.6, so no numpy<2 pin is needed: both run on numpy 2.4.6 (tests/test_ffcv.py).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
FFCV_VERSION="${FFCV_VERSION:-1.0.2}"
DEEPSPEED_VERSION="${DEEPSPEED_VERSION:-0.19.8}"
FAISS_VERSION="${FAISS_VERSION:-1.15.1}"
SUBMITIT_VERSION="${SUBMITIT_VERSION:-1.5.4}"
APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config g++)

say() { printf '\n[install_extras] %s\n' "$*"; }
timed() {  # timed LABEL CMD...: run CMD, print its wall time
    local label="$1"; shift
    local t0 ms; t0=$(date +%s%N)
    "$@"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '[install_extras] %s: %d.%01d s\n' "$label" $((ms / 1000)) $((ms % 1000 / 100))
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "[install_extras] not root and no sudo: cannot apt-get install ${APT_PACKAGES[*]}" >&2
        exit 1
    fi
fi

# ── apt: build dependencies of ffcv ──
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    say "apt: ${APT_PACKAGES[*]} already installed"
else
    say "apt: installing ${missing[*]}"
    timed "apt-get update" $SUDO apt-get update -qq
    timed "apt-get install" env DEBIAN_FRONTEND=noninteractive \
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
say "pkg-config: opencv4 $(pkg-config --modversion opencv4), libturbojpeg $(pkg-config --modversion libturbojpeg)"

# ── pip: pin torch and numpy to what is installed ──
pyver() { "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))"; }
TORCH_VERSION=$(pyver torch) || { echo "[install_extras] torch is not installed for $PYTHON; install the project first" >&2; exit 1; }
NUMPY_VERSION=$(pyver numpy 2>/dev/null || true)  # empty when numpy is not installed yet
CONSTRAINTS=$(mktemp /tmp/ueperf-constraints.XXXXXX)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
[ -n "$NUMPY_VERSION" ] && echo "numpy==$NUMPY_VERSION" >> "$CONSTRAINTS"
say "python: $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON"); constraints: $(tr '\n' ' ' < "$CONSTRAINTS")"
PIP=("$PYTHON" -m pip install --disable-pip-version-check --root-user-action=ignore -c "$CONSTRAINTS")

have() {  # have DIST VERSION: the distribution is installed at exactly that version
    [ "$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]
}

if have ffcv "$FFCV_VERSION"; then
    say "pip: ffcv $FFCV_VERSION already installed"
else
    # pillow: ffcv imports PIL (fields/rgb_image.py) but does not declare it (ueperf itself
    # depends on pillow, so in the project's environment this is already satisfied).
    say "pip: ffcv==$FFCV_VERSION (builds a C++ extension against OpenCV and libturbojpeg) + pillow"
    timed "pip ffcv" "${PIP[@]}" "ffcv==$FFCV_VERSION" pillow
fi

if have deepspeed "$DEEPSPEED_VERSION"; then
    say "pip: deepspeed $DEEPSPEED_VERSION already installed"
else
    # DS_BUILD_OPS=0: no CUDA/C++ ops at install time; DeepSpeed JIT-builds what it needs.
    say "pip: deepspeed==$DEEPSPEED_VERSION (DS_BUILD_OPS=0)"
    timed "pip deepspeed" env DS_BUILD_OPS=0 "${PIP[@]}" "deepspeed==$DEEPSPEED_VERSION"
fi

if have faiss-cpu "$FAISS_VERSION"; then
    say "pip: faiss-cpu $FAISS_VERSION already installed"
else
    say "pip: faiss-cpu==$FAISS_VERSION"
    timed "pip faiss-cpu" "${PIP[@]}" "faiss-cpu==$FAISS_VERSION"
fi

if have submitit "$SUBMITIT_VERSION"; then
    say "pip: submitit $SUBMITIT_VERSION already installed"
else
    say "pip: submitit==$SUBMITIT_VERSION (pure Python)"
    timed "pip submitit" "${PIP[@]}" "submitit==$SUBMITIT_VERSION"
fi

# ── verify ──
say "verifying imports"
timed "imports" "$PYTHON" - "$TORCH_VERSION" <<'EOF'
import importlib.metadata as m
import sys

import torch
assert m.version("torch") == sys.argv[1], f"torch changed: {m.version('torch')} != {sys.argv[1]}"
import ffcv  # noqa: F401
from ffcv.loader import Loader, OrderOption  # noqa: F401  (loads numba and the C extension)
from ffcv.fields import RGBImageField, IntField  # noqa: F401
import faiss
import deepspeed
import submitit  # noqa: F401
for dist in ("torch", "numpy", "ffcv", "numba", "opencv-python", "deepspeed", "faiss-cpu", "submitit"):
    print(f"  {dist:14s} {m.version(dist)}")
EOF
say "done"
