"""Choose between the Triton fast path and the torch reference.

Environment switch ``UEPERF_KERNELS``:

- ``auto`` (default): Triton when it is importable **and** the tensor is on CUDA;
- ``torch``: always the plain-torch reference;
- ``triton``: always Triton (an error if it cannot run). CPU tensors work only under the
  Triton interpreter, i.e. with ``TRITON_INTERPRET=1`` set before Triton is imported — this is
  how the tests exercise the kernels on machines without a GPU.

Triton is imported lazily (first call of :func:`triton_available`) and the result is cached;
nothing here raises at import time.
"""

from __future__ import annotations

import functools
import os

import torch

from ueperf.errors import ConfigError

ENV_VAR = "UEPERF_KERNELS"
MODES = ("auto", "torch", "triton")


def kernel_mode() -> str:
    """The kernel mode from ``$UEPERF_KERNELS`` (``auto`` when unset or empty).

    Raises :class:`ConfigError` for any other value. Read on every call (cheap), so tests can
    switch it with ``monkeypatch.setenv``.
    """
    raw = os.environ.get(ENV_VAR, "")
    mode = raw.strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(
            f"environment variable {ENV_VAR}={raw!r} is not a kernel mode; "
            f"use one of {', '.join(MODES)} (or unset it for 'auto')"
        )
    return mode


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` succeeds. Cached; never raises.

    Any exception counts as "not available": a broken Triton install must not take down a
    CPU-only run that would have used the torch reference anyway.
    """
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 — see docstring
        return False
    return True


def interpreter_enabled() -> bool:
    """True when the Triton interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def use_triton(t: torch.Tensor) -> bool:
    """Whether the op on tensor ``t`` should run the Triton kernel.

    ``torch`` → False; ``auto`` → Triton importable and ``t.is_cuda``; ``triton`` → True, or a
    :class:`ConfigError` that says why it cannot run (Triton missing, or a CPU tensor without
    the interpreter).
    """
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "auto":
        return bool(t.is_cuda) and triton_available()
    # mode == "triton": forced, so every reason it cannot run is an error the user must see.
    if not triton_available():
        raise ConfigError(
            f"{ENV_VAR}=triton but Triton cannot be imported; install triton "
            f"(pip install triton) or set {ENV_VAR}=auto or {ENV_VAR}=torch"
        )
    if not t.is_cuda and not interpreter_enabled():
        raise ConfigError(
            f"{ENV_VAR}=triton but the tensor is on {t.device}: Triton kernels run on CPU tensors "
            f"only under the Triton interpreter; set TRITON_INTERPRET=1 before triton is "
            f"imported, move the data to a GPU, or set {ENV_VAR}=torch"
        )
    return True
