"""Kernels around the search for straight-through quantization and codebook statistics.

* ``gather_and_sqerr``: z_q = e[idx] written in z's dtype, and per-row |z - e|^2 in fp32
  (computed from the difference, not from the search's expanded form, so the loss has
  no cancellation error).
* ``quantize_backward``: one pass over the rows gives
  grad_z = grad_zq + (2·beta·g/(N·d))·(z - e)      (straight-through + commitment)
  grad_E[k] = (2·g/(N·d))·Σ_{i: idx_i = k} (e_k - z_i)   (codebook loss)
  The codebook gradient is a per-code segment sum: no one-hot, no N×K.
* ``code_counts_and_sums``: per-code counts and sums of assigned rows (EMA updates, usage).

All accumulate in fp32. Rows are processed in BLOCK_N × BLOCK_D tiles; d is tiled.
Offsets are 64-bit (``rows * D`` passes 2^31 once N·d does).

Segment sums, two paths:

* Default: each block of BLOCK_N rows first sums its rows per code (a BLOCK_N × BLOCK_N
  "same code" matrix times the values, one exact fp32 ``tl.dot``), then only the first row
  of each code adds the block's sum with a relaxed atomic (no memory fence per element).
  When the codebook collapses (all rows pick one code, usual early in training) the adds
  on one address drop from N to N / BLOCK_N. The order of those adds varies from run to
  run, so results may differ in the last fp32 bits.
* ``torch.use_deterministic_algorithms(True)``: the rows are sorted by code (stable) and one
  program per (code, d tile) sums its rows in sorted order and writes the code's row once:
  identical results run to run, no atomics. A code holding most rows is then summed by
  one program per d tile, serially over its rows, where the default path spreads them
  over every block.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET

if HAS_TRITON:
    import triton
    import triton.language as tl

#: Rows per block of the segment sums (the "same code" matrix is SEGMENT_ROWS²), and their
#: widest d tile: the exact fp32 dot runs on FMA units, and wider tiles spill (sm_90 ptxas).
SEGMENT_ROWS = 16 if INTERPRET else 32
SEGMENT_BLOCK_D = 32
#: Widest d tile of the row kernels, most rows a tile; the segment dot needs ≥ 16 columns.
MAX_BLOCK_D = 256
MAX_ROWS = 128
MIN_BLOCK_D = 16
NUM_WARPS = 4


def _row_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D) for the row-wise kernels: up to 4K elements a tile and at most
    ``MAX_ROWS`` rows (more rows of 64-bit offsets spill at d ≤ 16 on sm_90)."""
    block_d = min(triton.next_power_of_2(d), MAX_BLOCK_D)
    block_n = 16 if INTERPRET else min(MAX_ROWS, 4096 // block_d)
    return block_n, block_d


def _segment_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D) for the kernels that reduce rows per code."""
    return SEGMENT_ROWS, min(max(triton.next_power_of_2(d), MIN_BLOCK_D), SEGMENT_BLOCK_D)


if HAS_TRITON:

    @triton.jit
    def _segments(code, row_ok, BLOCK_N: tl.constexpr):
        """For a block of rows: ``same`` (BLOCK_N, BLOCK_N) fp32, 1 where row j (valid) has
        row i's code, and ``leader``, true for the first valid row of each code."""
        same = (code[:, None] == code[None, :]) & row_ok[None, :]
        earlier = tl.arange(0, BLOCK_N)[None, :] < tl.arange(0, BLOCK_N)[:, None]
        leader = row_ok & (tl.sum((same & earlier).to(tl.int32), axis=1) == 0)
        return same.to(tl.float32), leader

    @triton.jit
    def _segment_add(out_ptr, code, same, leader, vals, dims, D):
        """out[code_i, dims] += Σ_{j: code_j = code_i} vals_j, added once per code (by its leader)."""
        sums = tl.dot(same, vals, input_precision="ieee")  # 0/1 weights: exact fp32 sums
        ok = leader[:, None] & (dims[None, :] < D)
        tl.atomic_add(out_ptr + code.to(tl.int64)[:, None] * D + dims[None, :], sums, mask=ok, sem="relaxed")

    @triton.jit
    def _gather_sqerr_kernel(
        z_ptr, e_ptr, idx_ptr, zq_ptr, sqerr_ptr, N, D,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        row_offs = rows.to(tl.int64)[:, None] * D
        total = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            z = tl.load(z_ptr + row_offs + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            e = tl.load(e_ptr + code[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            tl.store(zq_ptr + row_offs + dims[None, :], e.to(zq_ptr.dtype.element_ty), mask=ok)
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
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        row_offs = rows.to(tl.int64)[:, None] * D
        g = tl.load(gloss_ptr).to(tl.float32)
        scale = 2.0 * g * inv_numel  # d mean((z - e)^2) / d z, times the loss's incoming grad
        if CODE_GRAD:
            same, leader = _segments(code, row_ok, BLOCK_N)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            z = tl.load(z_ptr + row_offs + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            e = tl.load(e_ptr + code[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            gzq = tl.load(gzq_ptr + row_offs + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            gz = gzq + (beta * scale) * (z - e)
            tl.store(gz_ptr + row_offs + dims[None, :], gz.to(gz_ptr.dtype.element_ty), mask=ok)
            if CODE_GRAD:
                _segment_add(ge_ptr, code, same, leader, scale * (e - z), dims, D)

    @triton.jit
    def _counts_sums_kernel(
        x_ptr, idx_ptr, counts_ptr, sums_ptr, N, D,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        code = tl.load(idx_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        row_offs = rows.to(tl.int64)[:, None] * D
        same, leader = _segments(code, row_ok, BLOCK_N)
        tl.atomic_add(counts_ptr + code, tl.sum(same, axis=1), mask=leader, sem="relaxed")
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (dims[None, :] < D)
            x = tl.load(x_ptr + row_offs + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            _segment_add(sums_ptr, code, same, leader, x, dims, D)

    @triton.jit
    def _segment_sum_sorted_kernel(
        x_ptr, e_ptr, order_ptr, starts_ptr, counts_ptr, out_ptr, D,
        CODE_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """out[k, dims] = Σ over code k's rows, in sorted order, of x (or of e_k - x with
        CODE_GRAD); one program per (code, d tile), every output row written once."""
        k = tl.program_id(0).to(tl.int64)
        dims = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = dims < D
        start = tl.load(starts_ptr + k)
        count = tl.load(counts_ptr + k)
        if CODE_GRAD:
            e = tl.load(e_ptr + k * D + dims, mask=d_ok, other=0.0).to(tl.float32)
        total = tl.zeros([BLOCK_D], tl.float32)
        for r0 in range(0, count, BLOCK_N):
            at = r0 + tl.arange(0, BLOCK_N)
            ok = (at < count)[:, None] & d_ok[None, :]
            rows = tl.load(order_ptr + start + at, mask=at < count, other=0)
            x = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=ok, other=0.0).to(tl.float32)
            if CODE_GRAD:
                x = tl.where(ok, e[None, :] - x, 0.0)
            total += tl.sum(x, axis=0)
        tl.store(out_ptr + k * D + dims, total, mask=d_ok)


def _sorted_segments(idx: torch.Tensor, num_codes: int):
    """(rows sorted by code (stable), first sorted position of each code, rows per code)."""
    sorted_idx, order = torch.sort(idx, stable=True)
    codes = torch.arange(num_codes, device=idx.device, dtype=sorted_idx.dtype)
    starts = torch.searchsorted(sorted_idx, codes)
    return order, starts, torch.searchsorted(sorted_idx, codes, right=True) - starts


def _sorted_segment_sum(x, codebook, idx, num_codes, code_grad=False):
    """The deterministic segment sum (see the module doc): (K, D) fp32, and the counts."""
    d = x.shape[1]
    block_n, block_d = _segment_blocks(d)
    order, starts, counts = _sorted_segments(idx, num_codes)
    out = torch.empty((num_codes, d), device=x.device, dtype=torch.float32)
    _segment_sum_sorted_kernel[(num_codes, triton.cdiv(d, block_d))](
        x, codebook, order, starts, counts, out, d,
        CODE_GRAD=code_grad, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return out, counts


def gather_and_sqerr(
    z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z (N, D) and codebook (K, D) contiguous, idx (N,) → (codebook[idx] in z's dtype, |z-e|^2 fp32)."""
    n, d = z.shape
    block_n, block_d = _row_blocks(d)
    z_q = torch.empty_like(z)
    sqerr = torch.empty(n, device=z.device, dtype=torch.float32)
    _gather_sqerr_kernel[(triton.cdiv(n, block_n),)](
        z, codebook, idx, z_q, sqerr, n, d, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=NUM_WARPS
    )
    return z_q, sqerr


def quantize_backward(
    z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor, grad_zq: torch.Tensor,
    grad_loss: torch.Tensor, beta: float, code_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of (z_q, loss) w.r.t. z and, when ``code_grad``, the codebook (see module doc)."""
    n, d = z.shape
    deterministic = code_grad and torch.are_deterministic_algorithms_enabled()
    fused = code_grad and not deterministic
    block_n, block_d = _segment_blocks(d) if fused else _row_blocks(d)
    grad_z = torch.empty_like(z)
    # Without the fused codebook gradient the kernel never touches ge_ptr; any tensor will do.
    grad_e = torch.zeros(codebook.shape, device=z.device, dtype=torch.float32) if fused else grad_z
    _quantize_backward_kernel[(triton.cdiv(n, block_n),)](
        z, codebook, idx, grad_zq.contiguous(), grad_loss, grad_z, grad_e,
        n, d, float(beta), 1.0 / (n * d),
        CODE_GRAD=fused, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    if deterministic:
        # The scale 2·g/(N·d) is applied on the device: g is the loss's incoming gradient.
        grad_e, _ = _sorted_segment_sum(z, codebook, idx, codebook.shape[0], code_grad=True)
        grad_e = grad_e * (grad_loss.float() * (2.0 / (n * d)))
    return grad_z, (grad_e.to(codebook.dtype) if code_grad else None)


def code_counts_and_sums(x: torch.Tensor, idx: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code number of assigned rows (K,) and sum of those rows (K, D), both fp32."""
    n, d = x.shape
    if torch.are_deterministic_algorithms_enabled():
        sums, counts = _sorted_segment_sum(x, x, idx, num_codes)
        return counts.float(), sums
    block_n, block_d = _segment_blocks(d)
    counts = torch.zeros(num_codes, device=x.device, dtype=torch.float32)
    sums = torch.zeros((num_codes, d), device=x.device, dtype=torch.float32)
    _counts_sums_kernel[(triton.cdiv(n, block_n),)](
        x, idx, counts, sums, n, d, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=NUM_WARPS
    )
    return counts, sums
