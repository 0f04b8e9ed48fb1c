"""Kernel tests: Triton kernels run compiled on a CUDA device when there is one, and under the
Triton interpreter on CPU otherwise.

TRITON_INTERPRET must be in the environment before Triton builds a kernel; the kernels are
built lazily on first use (``ueperf.kernels.*._kernels``), and this file runs before any test
module, so setting it here (before anything imports triton) is early enough.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def dev() -> torch.device:
    """Device the kernel tests run on: CUDA when present, else CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _default_kernel_mode(monkeypatch):
    """Every test starts from UEPERF_KERNELS unset (= auto); tests that force a mode set it."""
    monkeypatch.delenv("UEPERF_KERNELS", raising=False)
