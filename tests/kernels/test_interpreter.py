"""lgvq.kernels.interpreter: triton < 3.7's interpreter, fixed for numpy >= 2.4, runs a loop
over a runtime bound (as every code-tile loop is), and the fix is applied only there."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from lgvq.kernels import INTERPRET  # noqa: E402
from lgvq.kernels.interpreter import backport_scalar_index, needs_scalar_index_backport  # noqa: E402


@triton.jit
def _sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):  # n is a runtime scalar: the interpreter calls int() on it
        offsets = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


@pytest.mark.triton
@pytest.mark.parametrize("n", [1, 8, 37])  # one element, one whole tile, a ragged last tile
def test_loop_over_a_runtime_bound(device, n):
    x = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    out = torch.zeros(1, device=device)
    _sum_kernel[(1,)](x, out, n, BLOCK=8)
    assert out.item() == n * (n + 1) / 2


@pytest.mark.triton
def test_backport_is_applied_only_where_needed():
    from triton.runtime import interpreter

    patched = getattr(interpreter._patch_lang_tensor, "lgvq_backport", False)
    assert patched == (INTERPRET and needs_scalar_index_backport())
    before = interpreter._patch_lang_tensor
    backport_scalar_index()  # a second call (another import path) must not wrap it twice
    assert interpreter._patch_lang_tensor is before
