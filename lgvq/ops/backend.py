"""Backend dispatch shared by every op: ``auto`` | ``triton`` | ``torch``."""

from __future__ import annotations

import torch

from lgvq.checks import check_choice
from lgvq.kernels import HAS_TRITON, INTERPRET

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for tensors living on one device.

    ``auto`` picks triton for CUDA tensors when triton is importable. ``triton`` on CPU
    tensors works only under ``TRITON_INTERPRET=1`` (the test mode).
    """
    check_choice("backend", backend, BACKENDS)
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if (on_cuda and HAS_TRITON) else "torch"
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package; install it or use backend='torch'")
    if not on_cuda and not INTERPRET:
        raise RuntimeError(
            "backend='triton' needs CUDA tensors; on CPU it runs only under TRITON_INTERPRET=1 "
            "(set before importing triton). Use backend='torch' or 'auto' for CPU tensors."
        )
    return "triton"
