"""Triton kernels and their launchers (installed as ``lgvq.kernels``).

Nothing here builds autograd graphs or modules; ``lgvq.ops`` wraps these launchers.
The package imports without triton: ``HAS_TRITON`` is then False and the ops fall back
to their torch references.
"""

import os

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without triton
    HAS_TRITON = False

#: Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before importing triton) runs the
#: kernels on CPU tensors. It is for correctness tests only: it cannot measure speed.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp32_dot_precision() -> str:
    """``input_precision`` for fp32 ``tl.dot``: torch's own matmul setting, so the kernels and
    the torch references agree on TF32 use (IEEE unless the user allowed TF32)."""
    import torch

    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
