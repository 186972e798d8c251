"""Per-code statistics of an assignment: counts and sums of the rows mapped to each code.

These drive EMA codebook updates, dead-code detection and usage/perplexity. Both paths
scatter-add into (K,) and (K, d) buffers: no one-hot, no N×K tensor, and no host sync (a
CUDA ``bincount`` reads its maximum back to size its output; a scatter into K slots does not).
"""

from __future__ import annotations

import torch

from lgvq.checks import check_count, check_finite_if_strict, check_same_device, check_tensor, is_strict
from lgvq.ops.backend import resolve_backend


def code_counts(idx: torch.Tensor, num_codes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Histogram (K,) of flat int64 ``idx`` over [0, K), without a host sync.

    Counts of ones are exact in fp32 up to 2^24 rows per code.
    """
    counts = torch.zeros(num_codes, device=idx.device, dtype=dtype)
    return counts.index_add_(0, idx, torch.ones_like(idx, dtype=dtype))


def code_counts_and_sums_torch(x: torch.Tensor, idx: torch.Tensor, num_codes: int):
    acc = torch.promote_types(x.dtype, torch.float32)
    counts = code_counts(idx, num_codes, acc)
    sums = torch.zeros((num_codes, x.shape[1]), device=x.device, dtype=acc).index_add_(0, idx, x.to(acc))
    return counts, sums


@torch.no_grad()
def code_counts_and_sums(
    x: torch.Tensor, idx: torch.Tensor, num_codes: int, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (K,) and sums (K, d) of the rows of ``x`` (..., d) assigned to each code by ``idx``.

    Outputs are fp32 (fp64 for fp64 inputs on the torch backend). ``idx`` values outside
    [0, num_codes) raise a ValueError in strict mode (``lgvq.set_strict``); otherwise they fail
    a device-side assert, which costs no host sync.
    """
    check_tensor("x", x, min_ndim=1, finite=False)
    check_finite_if_strict("x", x)
    check_tensor("idx", idx, dtypes=(torch.int64, torch.int32), finite=False, nonempty=False)
    if idx.shape != x.shape[:-1]:
        raise ValueError(f"idx must have shape x.shape[:-1] = {tuple(x.shape[:-1])}, got {tuple(idx.shape)}")
    check_count("num_codes", num_codes)
    check_same_device(x=x, idx=idx)
    flat_x = x.reshape(-1, x.shape[-1])
    flat_idx = idx.reshape(-1).long()
    _check_index_range(flat_idx, num_codes)
    if resolve_backend(backend, x) == "torch":
        return code_counts_and_sums_torch(flat_x, flat_idx, num_codes)
    if x.dtype == torch.float64:
        raise TypeError("float64 inputs are supported by backend='torch' only")
    return code_counts_and_sums_triton(flat_x.contiguous(), flat_idx.contiguous(), num_codes)


@torch.library.custom_op("lgvq::code_counts_and_sums_triton", mutates_args=())
def code_counts_and_sums_triton(x: torch.Tensor, idx: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton scatter kernel as one op (fake implementation below), for torch.compile."""
    from lgvq.kernels.quantize import code_counts_and_sums as launch

    return launch(x, idx, num_codes)


@code_counts_and_sums_triton.register_fake
def _code_counts_and_sums_triton_fake(x, idx, num_codes):
    return x.new_empty(num_codes, dtype=torch.float32), x.new_empty((num_codes, x.shape[1]), dtype=torch.float32)


def _check_index_range(flat_idx: torch.Tensor, num_codes: int) -> None:
    """idx in [0, num_codes): a clear ValueError in strict mode, else a device-side assert, so
    that an out-of-range index never reaches the kernels' unchecked scatter."""
    if flat_idx.numel() == 0:
        return
    low, high = flat_idx.min(), flat_idx.max()
    if is_strict():
        if low < 0 or high >= num_codes:
            raise ValueError(f"idx values must lie in [0, {num_codes}), got [{int(low)}, {int(high)}]")
        return
    torch._assert_async((low >= 0) & (high < num_codes), f"idx values must lie in [0, {num_codes})")
