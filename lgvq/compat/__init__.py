"""Faces of other VQ libraries over lgvq's fused ops.

``VectorQuantize``: lucidrains' vector-quantize-pytorch. (taming-transformers' face is
``lgvq.quantize.VectorQuantizer`` itself.)
"""

from lgvq.compat.vector_quantize import VectorQuantize

__all__ = ["VectorQuantize"]
