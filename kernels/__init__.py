"""Triton kernels and their launchers (installed as ``lgvq.kernels``).

Nothing here builds autograd graphs or modules; ``lgvq.ops`` wraps these launchers.
The package imports without triton: ``HAS_TRITON`` is then False and the ops fall back
to their torch references.

Importing this package does not import triton (about 0.1-0.2 s and, on a CPU-only machine,
of no use outside the interpreter tests): ``HAS_TRITON`` only asks whether triton is
installed, and triton itself is first imported with a launcher module (``lgvq.kernels.nearest``
and its siblings), which ``lgvq.ops`` imports when a Triton backend is chosen. The one
exception is the interpreter on triton < 3.7 with numpy >= 2.4, which needs a fix first
(``lgvq.kernels.interpreter``).
"""

import importlib.util
import os

HAS_TRITON = importlib.util.find_spec("triton") is not None

#: Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before importing triton) runs the
#: kernels on CPU tensors. It is for correctness tests only: it cannot measure speed.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if HAS_TRITON and INTERPRET:
    from .interpreter import backport_scalar_index

    backport_scalar_index()


def fp32_dot_precision() -> str:
    """``input_precision`` for fp32 ``tl.dot``, following torch's ``float32_matmul_precision``.

    ``"highest"`` (torch's default) gets 3xTF32: three TF32 tensor-core products per
    multiply, about fp32 accuracy (per-product error ~2^-18 relative, versus 2^-24 for IEEE
    fp32). ``"high"``/``"medium"`` (the user allowed TF32 in torch's own matmuls) get TF32
    (2^-10). IEEE fp32 dots are not used: on sm_90 they run on FMA units, reach 255
    registers, spill, and take tens of seconds to compile per config.
    """
    import torch

    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
