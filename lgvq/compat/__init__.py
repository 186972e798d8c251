"""Faces of other VQ libraries over lgvq's fused ops.

vector-quantize-pytorch's ``VectorQuantize``, ``ResidualVQ`` and ``GroupedResidualVQ``.
(taming-transformers' face is ``lgvq.quantize.VectorQuantizer`` itself.)
"""

from lgvq.compat.residual_vq import GroupedResidualVQ, ResidualVQ
from lgvq.compat.vector_quantize import VectorQuantize

__all__ = ["VectorQuantize", "ResidualVQ", "GroupedResidualVQ"]
