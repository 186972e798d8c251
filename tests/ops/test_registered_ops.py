"""The registered ops (``torch.library.custom_op``, namespace ``lgvq``): schema, fake
implementation, autograd registration and AOT dispatch checked by ``torch.library.opcheck``.
A fake whose shape or dtype disagrees with the real op, or a missing autograd formula, fails
here before it would break a compiled model. The Triton ops run in the interpreter on CPU."""

import pytest
import torch

from lgvq.ops.nearest import search_torch_op, search_triton_op
from lgvq.ops.quantize import vector_quantize_triton, vector_quantize_triton_backward
from lgvq.ops.relation import relation_triton, relation_triton_backward
from lgvq.ops.stats import code_counts_and_sums_triton


def _search_args(device, dtype=torch.float32):
    x, codebook = torch.randn(37, 12, device=device, dtype=dtype), torch.randn(70, 12, device=device, dtype=dtype)
    return x, codebook, codebook.float().pow(2).sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_search_op(dtype):
    torch.library.opcheck(search_torch_op, _search_args("cpu", dtype))


@pytest.mark.triton
@pytest.mark.parametrize("num_splits", [None, 3])
def test_triton_search_op(device, num_splits):
    torch.library.opcheck(search_triton_op, (*_search_args(device), num_splits))


@pytest.mark.triton
@pytest.mark.parametrize("codebook_grad", [True, False])
def test_triton_quantize_ops(device, codebook_grad):
    x, codebook, offsets = _search_args(device)
    z = x.requires_grad_()
    torch.library.opcheck(vector_quantize_triton, (z, codebook.requires_grad_(codebook_grad), offsets, 0.25, None))
    z_q, idx, loss = vector_quantize_triton(z.detach(), codebook.detach(), offsets, 0.25, None)
    backward_args = (z.detach(), codebook.detach(), idx, torch.randn_like(z_q), torch.ones(()), 0.25, codebook_grad)
    torch.library.opcheck(vector_quantize_triton_backward, backward_args)


@pytest.mark.triton
def test_triton_counts_op(device):
    x = torch.randn(41, 9, device=device)
    torch.library.opcheck(code_counts_and_sums_triton, (x, torch.randint(0, 13, (41,), device=device), 13))


@pytest.mark.triton
def test_triton_relation_ops(device):
    words, tokens = torch.randn(2, 5, 8, device=device), torch.randn(2, 7, 8, device=device)
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], device=device)
    codes = torch.randn(2, 7, 8, device=device, requires_grad=True)
    torch.library.opcheck(relation_triton, (words, mask, tokens, codes))
    _, *state = relation_triton(words, mask, tokens, codes.detach())
    torch.library.opcheck(relation_triton_backward, (codes.detach(), *state, torch.ones(())))
