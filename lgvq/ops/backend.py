"""Backend dispatch shared by every op: ``auto`` | ``triton`` | ``torch``.

Registered ops. Every kernel launch, and the torch search's loop over tiles, runs inside a
``torch.library.custom_op`` (namespace ``lgvq``) with a fake implementation (output shapes and
dtypes) and, where it has a gradient, ``register_autograd``. torch.compile therefore traces a
model through the ops with ``fullgraph=True`` (one opaque call each, no graph break), and CUDA
graphs capture them (no host sync inside). The Triton launches are wrapped as custom ops
rather than ``torch.library.triton_op`` + ``wrap_triton``: those would need the launch sites
in ``lgvq.kernels`` themselves to go through ``wrap_triton``, where the launchers choose tile
configurations and codebook splits on the host (autotuning, resource-based pruning, SM
counts). Kept opaque, they stay one launcher per kernel; Inductor could not fuse much into
these bandwidth- or dot-bound kernels anyway.
"""

from __future__ import annotations

import torch

from lgvq.checks import check_choice
from lgvq.kernels import HAS_TRITON, INTERPRET

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for tensors living on one device.

    ``auto`` picks triton for CUDA tensors when triton is importable. ``triton`` on CPU
    tensors works only under ``TRITON_INTERPRET=1`` (the test mode); elsewhere it is a
    ValueError, like every other backend a call cannot use.
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
        raise ValueError(
            "backend='triton' needs CUDA tensors; on CPU it runs only under TRITON_INTERPRET=1 "
            "(set before importing triton). Use backend='torch' or 'auto' for CPU tensors."
        )
    return "triton"
