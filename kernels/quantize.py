"""Kernels around the search for straight-through quantization and codebook statistics.

* ``gather_and_sqerr``: z_q = e[idx] written in z's dtype, and per-row |z - e|^2 in fp32
  (computed from the difference, not from the search's expanded form, so the loss has
  no cancellation error).
* ``quantize_backward``: one pass over the rows gives
  grad_z = grad_zq + (2·beta·g/(N·d))·(z - e)      (straight-through + commitment)
  grad_E[k] += (2·g/(N·d))·(e_k - z_i) for every row i with idx_i = k   (codebook loss)
  The codebook gradient is a per-code segment sum done with atomic adds: no one-hot, no N×K.
* ``code_counts_and_sums``: per-code counts and sums of assigned rows (EMA updates, usage).

All accumulate in fp32. Rows are processed in BLOCK_N × BLOCK_D tiles; d is tiled.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET

if HAS_TRITON:
    import triton
    import triton.language as tl


def _row_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D) for the row-wise kernels: about 4K elements a tile."""
    block_d = min(triton.next_power_of_2(d), 256)
    block_n = 16 if INTERPRET else max(1, 4096 // block_d)
    return block_n, block_d


if HAS_TRITON:

    @triton.jit
    def _gather_sqerr_kernel(
        z_ptr, e_ptr, idx_ptr, zq_ptr, sqerr_ptr, N, D,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0)
        total = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            z = tl.load(z_ptr + rows[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            e = tl.load(e_ptr + code[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            tl.store(zq_ptr + rows[:, None] * D + dims[None, :], e.to(zq_ptr.dtype.element_ty), mask=ok)
            diff = z - e
            total += tl.sum(diff * diff, axis=1)
        tl.store(sqerr_ptr + rows, total, mask=row_ok)

    @triton.jit
    def _quantize_backward_kernel(
        z_ptr, e_ptr, idx_ptr, gzq_ptr, gloss_ptr, gz_ptr, ge_ptr,
        N, D, beta, inv_numel,
        CODE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0)
        g = tl.load(gloss_ptr).to(tl.float32)
        scale = 2.0 * g * inv_numel  # d mean((z - e)^2) / d z, times the loss's incoming grad
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            offs = rows[:, None] * D + dims[None, :]
            z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            e = tl.load(e_ptr + code[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            gzq = tl.load(gzq_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            gz = gzq + (beta * scale) * (z - e)
            tl.store(gz_ptr + offs, gz.to(gz_ptr.dtype.element_ty), mask=ok)
            if CODE_GRAD:
                tl.atomic_add(ge_ptr + code[:, None] * D + dims[None, :], scale * (e - z), mask=ok)

    @triton.jit
    def _counts_sums_kernel(
        x_ptr, idx_ptr, counts_ptr, sums_ptr, N, D,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0)
        tl.atomic_add(counts_ptr + code, tl.full([BLOCK_N], 1.0, tl.float32), mask=row_ok)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            x = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            tl.atomic_add(sums_ptr + code[:, None] * D + dims[None, :], x, mask=ok)


def gather_and_sqerr(
    z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z (N, D) and codebook (K, D) contiguous, idx (N,) → (codebook[idx] in z's dtype, |z-e|^2 fp32)."""
    n, d = z.shape
    block_n, block_d = _row_blocks(d)
    z_q = torch.empty_like(z)
    sqerr = torch.empty(n, device=z.device, dtype=torch.float32)
    _gather_sqerr_kernel[(triton.cdiv(n, block_n),)](
        z, codebook, idx, z_q, sqerr, n, d, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return z_q, sqerr


def quantize_backward(
    z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, grad_zq: torch.Tensor,
    grad_loss: torch.Tensor, beta: float, code_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of (z_q, loss) w.r.t. z and, when ``code_grad``, the codebook (see module doc)."""
    n, d = z.shape
    block_n, block_d = _row_blocks(d)
    grad_z = torch.empty_like(z)
    # Without a codebook gradient the kernel never touches ge_ptr; any tensor will do.
    grad_e = torch.zeros(codebook.shape, device=z.device, dtype=torch.float32) if code_grad else grad_z
    _quantize_backward_kernel[(triton.cdiv(n, block_n),)](
        z, codebook, idx, grad_zq.contiguous(), grad_loss, grad_z, grad_e,
        n, d, float(beta), 1.0 / (n * d),
        CODE_GRAD=code_grad, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return grad_z, (grad_e.to(codebook.dtype) if code_grad else None)


def code_counts_and_sums(x: torch.Tensor, idx: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code number of assigned rows (K,) and sum of those rows (K, D), both fp32."""
    n, d = x.shape
    block_n, block_d = _row_blocks(d)
    counts = torch.zeros(num_codes, device=x.device, dtype=torch.float32)
    sums = torch.zeros((num_codes, d), device=x.device, dtype=torch.float32)
    _counts_sums_kernel[(triton.cdiv(n, block_n),)](
        x, idx, counts, sums, n, d, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return counts, sums
