"""The functional API: every op has a torch reference, a Triton path and backend dispatch."""

from lgvq.ops.nearest import nearest_code
from lgvq.ops.quantize import vector_quantize
from lgvq.ops.relation import relation_alignment_loss
from lgvq.ops.residual import residual_code_statistics, residual_quantize, stage_inputs
from lgvq.ops.softmax import (
    codebook_entropy,
    codebook_softmax_sums,
    entropy_from_sums,
    index_backprop_quantize,
    lfq_entropy,
    lfq_softmax_sums,
)
from lgvq.ops.stats import code_counts_and_sums

__all__ = [
    "nearest_code", "vector_quantize", "relation_alignment_loss", "code_counts_and_sums",
    "index_backprop_quantize", "codebook_entropy", "codebook_softmax_sums", "lfq_entropy", "lfq_softmax_sums",
    "entropy_from_sums", "residual_quantize", "residual_code_statistics", "stage_inputs",
]
