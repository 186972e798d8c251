"""nn.Modules over the fused ops: the drop-in ``VectorQuantizer`` and its codebook updates."""

from lgvq.quantize.cvq import ClusteredVectorQuantizer
from lgvq.quantize.kmeans import kmeans
from lgvq.quantize.large import ProjectedVectorQuantizer
from lgvq.quantize.residual import ResidualQuantizer
from lgvq.quantize.vector_quantizer import QuantizerOutput, VectorQuantizer, perplexity_from_counts

__all__ = [
    "VectorQuantizer", "ClusteredVectorQuantizer", "ProjectedVectorQuantizer", "ResidualQuantizer", "QuantizerOutput", "kmeans",
    "perplexity_from_counts",
]
