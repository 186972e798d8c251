"""Triton kernels and their launchers (installed as ``lgvq.kernels``).

Nothing here builds autograd graphs or modules; ``lgvq.ops`` wraps these launchers.
The package imports without triton: ``HAS_TRITON`` is then False and the ops fall back
to their torch references.

Importing this package does not import triton (about 0.1-0.2 s and, on a CPU-only machine,
of no use outside the interpreter tests): ``HAS_TRITON`` only asks whether triton is
installed, and triton itself is first imported with a launcher module (``lgvq.kernels.nearest``
and its siblings), which ``lgvq.ops`` imports when a Triton backend is chosen.
"""

import importlib.util
import os

HAS_TRITON = importlib.util.find_spec("triton") is not None

#: Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before importing triton) runs the
#: kernels on CPU tensors. It is for correctness tests only: it cannot measure speed.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp32_dot_precision() -> str:
    """``input_precision`` for fp32 ``tl.dot``: torch's own matmul setting, so the kernels and
    the torch references agree on TF32 use (IEEE unless the user allowed TF32)."""
    import torch

    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
