"""Fused codebook softmax: IBQ's soft path and the entropy sums, the N×K matrix never written.

The math and the four passes are those of ``lgvq.ops.softmax`` (its docstring): logits
``l = scale·z·eᵀ + bias``, ``p = exp(l - lse)``, and for the gradients ``D = p (w - c)``.
Here each pass is one kernel:

- ``_softmax_rows_kernel`` (row-owned): a program owns BLOCK_N rows, holds their z tile and
  streams the codebook in BLOCK_K tiles with an online softmax: running max m, Σ exp(l - m),
  Σ exp(l - m)(l - m) (entropy), Σ exp(l - m)·e (IBQ's attention output, a second ``tl.dot``)
  and the argmax (strict comparison across tiles, leftmost inside one: the lowest index wins).
- ``_softmax_columns_kernel`` (code-owned): a program owns BLOCK_K codes and streams row tiles
  with the rows' lse: P_k = Σ_i p_ik.
- ``_softmax_backward_rows_kernel`` (row-owned): recomputes p per code tile,
  ``dz = scale·(Σ_k p w e - c·s)`` and c_i = Σ_k p_ik w_ik.
- ``_softmax_backward_codes_kernel`` (code-owned): recomputes p per row tile with the rows' c,
  ``de = scale·Dᵀz``, ``db = Σ_i D``.
Every output has one owner, so no atomics. IBQ's w is ``g·eᵀ`` (one more ``tl.dot`` per tile);
the entropy's is ``γ_k - η·log p``. LFQ's codes (``LFQ``) are made in registers from the
code indices' bits: coordinate j of code k is ``2·((k >> j) & 1) - 1``.

Row length: the whole padded row is one tile (``BLOCK_D`` = next power of two ≥ 16), so the
Triton path takes d ≤ ``MAX_D`` (256 for 16-bit operands, 64 for fp32); the accumulators
(BLOCK_N × BLOCK_D, fp32) then fit the registers with the tiles of ``TILES``. Wider rows
stay on the torch path (``backend="auto"``). Products: 16-bit operands are exact in the fp32
accumulators; fp32 operands use ``fp32_dot_precision`` (3xTF32 or TF32); p and D enter their
dots in the inputs' dtype (as in flash attention).
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, fp32_dot_precision

if HAS_TRITON:
    import triton
    import triton.language as tl

#: Widest row the kernels hold whole, by operand size in bytes: fp32 operands split into
#: 3xTF32 hi/lo parts need twice the registers (wider fp32 rows spilled in the compile gate).
MAX_D = {2: 256, 4: 64}
#: (operand bytes, BLOCK_D) → (BLOCK_N, BLOCK_K, num_warps, num_stages); checked by
#: bench/compile_check.py (fp32 at 64 × 64 tiles spilled there).
TILES = {
    (2, 16): (64, 64, 4, 2), (2, 32): (64, 64, 4, 2), (2, 64): (64, 64, 4, 2),
    (2, 128): (64, 32, 8, 2), (2, 256): (32, 32, 8, 1),
    (4, 16): (32, 32, 4, 2), (4, 32): (32, 32, 4, 2), (4, 64): (32, 32, 4, 2),
}
#: The interpreter: the smallest tiles ``tl.dot`` takes, so tiny test shapes cross several.
INTERPRET_TILE = (16, 16, 1, 1)


def block_d_for(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def max_d(dtype: torch.dtype) -> int:
    """Widest row the kernels take for operands of ``dtype``."""
    return MAX_D[torch.tensor([], dtype=dtype).element_size()]


def tile_for(d: int, elem_size: int):
    return INTERPRET_TILE if INTERPRET else TILES[(elem_size, block_d_for(d))]


if HAS_TRITON:

    @triton.jit
    def _code_tile(e_ptr, codes, dims, K, D, stride_e, LFQ: tl.constexpr, dtype: tl.constexpr):
        """(BLOCK_K, BLOCK_D) codes, zero outside (K, D); LFQ's made from the index bits."""
        ok = (codes[:, None] < K) & (dims[None, :] < D)
        if LFQ:
            bits = (codes[:, None] >> dims[None, :]) & 1
            return tl.where(ok, bits * 2 - 1, 0).to(dtype)
        return tl.load(e_ptr + codes.to(tl.int64)[:, None] * stride_e + dims[None, :], mask=ok, other=0.0)

    @triton.jit
    def _logit_tile(z, e, bias_ptr, codes, K, scale, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
        """scale·z·eᵀ + bias, -inf past the last code."""
        logits = tl.dot(z, tl.trans(e), input_precision=PRECISION) * scale
        code_ok = codes < K
        if HAS_BIAS:
            logits += tl.load(bias_ptr + codes, mask=code_ok, other=0.0)[None, :]
        return tl.where(code_ok[None, :], logits, float("-inf"))

    @triton.jit
    def _row_tile(ptr, rows, dims, N, D, stride):
        return tl.load(ptr + rows.to(tl.int64)[:, None] * stride + dims[None, :],
                       mask=(rows[:, None] < N) & (dims[None, :] < D), other=0.0)

    @triton.jit
    def _softmax_rows_kernel(
        z_ptr, e_ptr, bias_ptr, lse_ptr, idx_ptr, soft_ptr, ent_ptr,
        N, K, D, stride_z, stride_e, scale,
        ATTEND: tl.constexpr, ENTROPY: tl.constexpr, LFQ: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        dims = tl.arange(0, BLOCK_D)
        z = _row_tile(z_ptr, rows, dims, N, D, stride_z)
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_N], tl.float32)
        spread = tl.zeros([BLOCK_N], tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            e = _code_tile(e_ptr, codes, dims, K, D, stride_e, LFQ, z_ptr.dtype.element_ty)
            logits = _logit_tile(z, e, bias_ptr, codes, K, scale, HAS_BIAS, PRECISION)
            tile_max, tile_arg = tl.max(logits, axis=1, return_indices=True, return_indices_tie_break_left=True)
            best_idx = tl.where(tile_max > m, tile_arg + k0, best_idx)  # strict: an earlier tile keeps a tie
            m_new = tl.maximum(m, tile_max)
            alpha = tl.exp(m - m_new)
            shifted = logits - m_new[:, None]
            p = tl.exp(shifted)
            if ENTROPY:
                # nothing carried from before the first tile (m = -inf there); past the last code p = 0
                carried = tl.where(total > 0, m - m_new, 0.0) * total
                spread = alpha * (spread + carried) + tl.sum(p * tl.where(p > 0, shifted, 0.0), axis=1)
            total = alpha * total + tl.sum(p, axis=1)
            if ATTEND:
                acc = acc * alpha[:, None] + tl.dot(p.to(e.dtype), e, input_precision=PRECISION)
            m = m_new
        tl.store(lse_ptr + rows, m + tl.log(total), mask=row_ok)
        tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
        if ATTEND:
            out = soft_ptr + rows.to(tl.int64)[:, None] * D + dims[None, :]
            tl.store(out, acc / total[:, None], mask=row_ok[:, None] & (dims[None, :] < D))
        if ENTROPY:
            tl.store(ent_ptr + rows, tl.log(total) - spread / total, mask=row_ok)

    @triton.jit
    def _softmax_columns_kernel(
        z_ptr, e_ptr, bias_ptr, lse_ptr, sums_ptr,
        N, K, D, stride_z, stride_e, scale,
        LFQ: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        dims = tl.arange(0, BLOCK_D)
        e = _code_tile(e_ptr, codes, dims, K, D, stride_e, LFQ, z_ptr.dtype.element_ty)
        acc = tl.zeros([BLOCK_K], tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            row_ok = rows < N
            z = _row_tile(z_ptr, rows, dims, N, D, stride_z)
            logits = _logit_tile(z, e, bias_ptr, codes, K, scale, HAS_BIAS, PRECISION)
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
            p = tl.where(row_ok[:, None], tl.exp(logits - lse[:, None]), 0.0)
            acc += tl.sum(p, axis=0)
        tl.store(sums_ptr + codes, acc, mask=codes < K)

    @triton.jit
    def _probabilities(z, e, bias_ptr, codes, K, scale, lse, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
        """(p, log p) of a tile from the rows' lse; log p is 0, not -inf, past the last code (p = 0
        there), so that products with p stay 0."""
        log_p = _logit_tile(z, e, bias_ptr, codes, K, scale, HAS_BIAS, PRECISION) - lse[:, None]
        return tl.exp(log_p), tl.where((codes < K)[None, :], log_p, 0.0)

    @triton.jit
    def _probability_grad(log_p, g, e, gamma_ptr, eta, codes, K, IBQ: tl.constexpr, PRECISION: tl.constexpr):
        """w = ∂L/∂p of a tile: IBQ's g·eᵀ, the entropy's γ_k - η log p."""
        if IBQ:
            w = tl.dot(g, tl.trans(e), input_precision=PRECISION)
        else:
            w = tl.load(gamma_ptr + codes, mask=codes < K, other=0.0)[None, :] - eta * log_p
        return w

    @triton.jit
    def _softmax_backward_rows_kernel(
        z_ptr, e_ptr, bias_ptr, lse_ptr, soft_ptr, g_ptr, gamma_ptr, eta_ptr, dz_ptr, c_ptr,
        N, K, D, stride_z, stride_e, scale,
        IBQ: tl.constexpr, LFQ: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        dims = tl.arange(0, BLOCK_D)
        dtype = z_ptr.dtype.element_ty
        z = _row_tile(z_ptr, rows, dims, N, D, stride_z)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        g = _row_tile(g_ptr, rows, dims, N, D, D).to(dtype) if IBQ else z
        eta = 0.0 if IBQ else tl.load(eta_ptr)
        weighted = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        attended = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        c = tl.zeros([BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            e = _code_tile(e_ptr, codes, dims, K, D, stride_e, LFQ, dtype)
            p, log_p = _probabilities(z, e, bias_ptr, codes, K, scale, lse, HAS_BIAS, PRECISION)
            pw = p * _probability_grad(log_p, g, e, gamma_ptr, eta, codes, K, IBQ, PRECISION)
            c += tl.sum(pw, axis=1)
            weighted += tl.dot(pw.to(dtype), e, input_precision=PRECISION)
            if not IBQ:
                attended += tl.dot(p.to(dtype), e, input_precision=PRECISION)
        if IBQ:
            attended = _row_tile(soft_ptr, rows, dims, N, D, D)
        out = dz_ptr + rows.to(tl.int64)[:, None] * D + dims[None, :]
        tl.store(out, scale * (weighted - c[:, None] * attended), mask=row_ok[:, None] & (dims[None, :] < D))
        tl.store(c_ptr + rows, c, mask=row_ok)

    @triton.jit
    def _softmax_backward_codes_kernel(
        z_ptr, e_ptr, bias_ptr, lse_ptr, c_ptr, g_ptr, gamma_ptr, eta_ptr, de_ptr, db_ptr,
        N, K, D, stride_z, stride_e, scale,
        IBQ: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        code_ok = codes < K
        dims = tl.arange(0, BLOCK_D)
        dtype = z_ptr.dtype.element_ty
        e = _code_tile(e_ptr, codes, dims, K, D, stride_e, False, dtype)
        eta = 0.0 if IBQ else tl.load(eta_ptr)
        acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
        bias_acc = tl.zeros([BLOCK_K], tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            row_ok = rows < N
            z = _row_tile(z_ptr, rows, dims, N, D, stride_z)
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
            c = tl.load(c_ptr + rows, mask=row_ok, other=0.0)
            g = _row_tile(g_ptr, rows, dims, N, D, D).to(dtype) if IBQ else z
            p, log_p = _probabilities(z, e, bias_ptr, codes, K, scale, lse, HAS_BIAS, PRECISION)
            w = _probability_grad(log_p, g, e, gamma_ptr, eta, codes, K, IBQ, PRECISION)
            grad_logits = tl.where(row_ok[:, None], p * (w - c[:, None]), 0.0)
            bias_acc += tl.sum(grad_logits, axis=0)
            acc += tl.dot(tl.trans(grad_logits.to(dtype)), z, input_precision=PRECISION)
        out = de_ptr + codes.to(tl.int64)[:, None] * D + dims[None, :]
        tl.store(out, scale * acc, mask=code_ok[:, None] & (dims[None, :] < D))
        tl.store(db_ptr + codes, bias_acc, mask=code_ok)


def _prepare(z: torch.Tensor, codebook: torch.Tensor | None, bias: torch.Tensor | None):
    """One operand dtype (``tl.dot`` wants it), unit stride along d; LFQ passes z as a dummy codebook."""
    dtype = z.dtype if codebook is None else torch.promote_types(z.dtype, codebook.dtype)
    z = z.to(dtype).contiguous()
    codebook = z if codebook is None else codebook.to(dtype).contiguous()
    bias = z if bias is None else bias.float().contiguous()
    return z, codebook, bias


def _common(z, codebook, lfq: bool, has_bias: bool):
    n, d = z.shape
    k = 2**d if lfq else codebook.shape[0]
    if d > max_d(z.dtype):
        raise ValueError(f"the Triton codebook softmax takes {z.dtype} rows of at most {max_d(z.dtype)} elements, "
                         f"got d = {d}")
    block_n, block_k, warps, stages = tile_for(d, z.element_size())
    precision = fp32_dot_precision() if z.dtype == torch.float32 else "ieee"
    meta = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d_for(d), PRECISION=precision,
                num_warps=warps, num_stages=stages)
    return n, k, d, meta


def softmax_forward(z, codebook, bias, scale: float, *, attend: bool, entropy: bool):
    """Row pass over flat z (N, d): (lse, idx, soft or None, per-row entropy or None), fp32.
    codebook None: LFQ's {-1, 1}^d."""
    lfq, has_bias = codebook is None, bias is not None
    z, codebook, bias = _prepare(z, codebook, bias)
    n, k, d, meta = _common(z, codebook, lfq, has_bias)
    lse = torch.empty(n, device=z.device, dtype=torch.float32)
    idx = torch.empty(n, device=z.device, dtype=torch.int64)
    soft = torch.empty(n, d, device=z.device, dtype=torch.float32) if attend else lse
    ent = torch.empty(n, device=z.device, dtype=torch.float32) if entropy else lse
    _softmax_rows_kernel[(triton.cdiv(n, meta["BLOCK_N"]),)](
        z, codebook, bias, lse, idx, soft, ent, n, k, d, z.stride(0), codebook.stride(0), scale,
        ATTEND=attend, ENTROPY=entropy, LFQ=lfq, HAS_BIAS=has_bias, **meta,
    )
    return lse, idx, soft if attend else None, ent if entropy else None


def probability_sums(z, codebook, bias, scale: float, lse):
    """Column pass: P_k = Σ_i exp(l_ik - lse_i), (K,) fp32."""
    lfq, has_bias = codebook is None, bias is not None
    z, codebook, bias = _prepare(z, codebook, bias)
    n, k, d, meta = _common(z, codebook, lfq, has_bias)
    sums = torch.empty(k, device=z.device, dtype=torch.float32)
    _softmax_columns_kernel[(triton.cdiv(k, meta["BLOCK_K"]),)](
        z, codebook, bias, lse.float().contiguous(), sums, n, k, d, z.stride(0), codebook.stride(0), scale,
        LFQ=lfq, HAS_BIAS=has_bias, **meta,
    )
    return sums


def softmax_backward(z, codebook, bias, scale: float, lse, *, soft=None, grad_soft=None, grad_entropy=None,
                     grad_sums=None, code_grad: bool):
    """(dz, de or None, db or None) in fp32: IBQ's soft path when ``grad_soft`` is given (with the
    forward's ``soft``), else the entropy sums' (``grad_entropy`` a 0-dim tensor, ``grad_sums`` (K,)).
    The code pass runs only for ``code_grad`` (never for LFQ, whose codes are constants)."""
    lfq, has_bias, ibq = codebook is None, bias is not None, grad_soft is not None
    z, codebook, bias = _prepare(z, codebook, bias)
    n, k, d, meta = _common(z, codebook, lfq, has_bias)
    lse = lse.float().contiguous()
    dz = torch.empty(n, d, device=z.device, dtype=torch.float32)
    c = torch.empty(n, device=z.device, dtype=torch.float32)
    g = grad_soft.float().contiguous() if ibq else lse
    soft = soft.float().contiguous() if ibq else lse
    gamma = lse if ibq else grad_sums.float().contiguous()
    eta = lse if ibq else grad_entropy.float().reshape(1)
    args = (n, k, d, z.stride(0), codebook.stride(0), scale)
    _softmax_backward_rows_kernel[(triton.cdiv(n, meta["BLOCK_N"]),)](
        z, codebook, bias, lse, soft, g, gamma, eta, dz, c, *args, IBQ=ibq, LFQ=lfq, HAS_BIAS=has_bias, **meta,
    )
    if not code_grad or lfq:
        return dz, None, None
    de = torch.empty(k, d, device=z.device, dtype=torch.float32)
    db = torch.empty(k, device=z.device, dtype=torch.float32)
    _softmax_backward_codes_kernel[(triton.cdiv(k, meta["BLOCK_K"]),)](
        z, codebook, bias, lse, c, g, gamma, eta, de, db, *args, IBQ=ibq, HAS_BIAS=has_bias, **meta,
    )
    return dz, de, db
