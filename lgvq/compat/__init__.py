"""Faces of other VQ libraries over lgvq's fused ops.

``VectorQuantize``, ``ResidualVQ`` and ``GroupedResidualVQ``: lucidrains' vector-quantize-pytorch.
``IndexPropagationQuantize`` and ``LFQ``: Open-MAGVIT2's IBQ and lookup-free quantizers.
(taming-transformers' face is ``lgvq.quantize.VectorQuantizer`` itself.)
"""

from lgvq.compat.ibq import IndexPropagationQuantize
from lgvq.compat.lfq import LFQ
from lgvq.compat.residual_vq import GroupedResidualVQ, ResidualVQ
from lgvq.compat.vector_quantize import VectorQuantize

__all__ = ["IndexPropagationQuantize", "LFQ", "VectorQuantize", "ResidualVQ", "GroupedResidualVQ"]
