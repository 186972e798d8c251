"""Relationship-alignment loss (LG-VQ's Lras): fused forward and backward kernels.

Per batch element b, with Ŵ = W/|W|, T̂ = T/|T|, m the word mask and eps as in F.normalize::

    S = Ŵ T̂ᵀ;  v, a = max / argmax of S over the M tokens     (one best token per word)
    Ĝ_l = m_l Z[a_l] v_l / |Z[a_l] v_l| = Z[a_l] · gscale_l     (gscale_l = m_l v_l / max(|v_l| |Z[a_l]|, eps))
    P = Ĝ Ĝᵀ;  Q = (m Ŵ)(m Ŵ)ᵀ;  D = P − Q;  loss = Σ_b Σ D² / (B L L)

Backward (argmax and v are constants; P and Q are symmetric; c = grad_loss · 4 / (B L L)):

    dL/dĜ = c D Ĝ
    u_l = Z[a_l] v_l,  Ĝ_l = m_l u_l / max(|u_l|, eps)
    dL/du_l = m_l / max(|u_l|, eps) · (dĜ_l − [|u_l| > eps] Ĝ_l (Ĝ_l · dĜ_l))
    Ĝ_l · dĜ_l = c Σ_k D_lk P_lk = c r_l                 (computed in the forward, no extra pass)
    dL/dZ[a_l] = v_l dL/du_l = c gscale_l (D Ĝ − r Ĝ)_l  (r_l zeroed where |u_l| <= eps)

and dL/dcodes[b, j] = Σ_{l : a_l = j} dL/dZ[a_l].

Three kernels; none writes an (L, M) similarity matrix or a gathered (L, Dt) copy to memory:

1. ``_match_kernel`` — grid (B, word blocks, token tiles). One S tile (tl.dot over a Dt
   loop, rows and columns scaled by the inverse norms afterwards) and its max / argmax per
   word, written as a tiny (B, token tiles, L) partial. Splitting over words and tokens
   (not one program per caption) keeps the GPU full when B is small: B = 8 would otherwise
   run 8 programs.
2. ``_gram_kernel`` — grid (B, word blocks, word blocks). Reduces the partials to (v, a),
   streams W and the gathered Z[a] rows over Dt into the two Gram tiles and the row norms,
   and writes D, the loss partial, r and (for the backward) a and gscale.
3. ``_grad_kernel`` — grid (B, Dt tiles). dL/dZ[a] for all words of one caption (D Ĝ
   streamed over column blocks of D, so D never sits whole in registers), then the
   scatter to codes as a one-hot tl.dot per token tile: deterministic (no atomics, duplicate
   argmaxes add up inside the dot) and every element of dcodes is written once, zeros
   included, so no zero-fill pass and no fp32 staging buffer are needed.

Accumulation is fp32 for every input dtype. fp32 operands of tl.dot follow torch's
``float32_matmul_precision`` through ``fp32_dot_precision`` ("highest" → 3xTF32, about fp32
accuracy, so the argmax matches the torch reference except on near-ties; "high" → TF32);
the one-hot scatter is always IEEE so that it copies the gradients exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import HAS_TRITON, INTERPRET, fp32_dot_precision

if HAS_TRITON:
    import triton
    import triton.language as tl

#: The backward keeps all words of a caption in one program (the one-hot scatter adds
#: them up), so registers bound the words per caption; CLIP's context length, 77, fits.
MAX_WORDS = 128
# Word and token block sizes are fixed by the launcher (not autotuned) because they shape
# the partial buffers that the next kernel reads. The interpreter uses the smallest tiles
# tl.dot allows, so tiny test shapes still cross several blocks.
WORD_BLOCK = 16 if INTERPRET else 32
TOKEN_BLOCK = 16 if INTERPRET else 64


def _configs(tiles, gpu_rows):
    """Autotune candidates: ``gpu_rows`` are (one size per name in ``tiles``, num_warps, num_stages).

    The GPU rows are those whose sm_90 ptxas report (``python -m bench.compile_check``, fp32
    3xTF32 and TF32, fp16, bf16; ``bench/results/compile-sm90.md``) stays within the gate's
    spill bound for every dtype; the gram kernel's BLOCK_D = 64 spills with 3xTF32.

    The interpreter gets one config with the smallest tl.dot tiles: tuning there is slow
    and meaningless, and small tiles make tiny test shapes cross several tiles.
    """
    if INTERPRET:
        return [triton.Config({name: 16 for name in tiles}, num_warps=1)]
    return [
        triton.Config(dict(zip(tiles, row[:-2])), num_warps=row[-2], num_stages=row[-1]) for row in gpu_rows
    ]


if HAS_TRITON:

    @triton.jit
    def _dot_nt(a, b, acc, PRECISION: tl.constexpr):
        """acc + a @ bᵀ; operands of different dtypes (fp32 words, bf16 tokens) meet in fp32."""
        if a.dtype != b.dtype:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)

    @triton.jit
    def _row_sq_sum(x):
        return tl.sum(x.to(tl.float32) * x.to(tl.float32), axis=1)

    @triton.jit
    def _inv_norm(sq_norm, eps):
        """1 / max(|x|, eps), F.normalize's convention: zero rows scale to zero, not NaN."""
        return 1.0 / tl.maximum(tl.sqrt(sq_norm), eps)

    @triton.jit
    def _code_scale(v, z_sq, mask, eps):
        """gscale with Ĝ = Z[a] · gscale = m Z[a] v / max(|Z[a] v|, eps); |Z[a] v| = |v| |Z[a]|."""
        return mask * v / tl.maximum(tl.abs(v) * tl.sqrt(z_sq), eps)

    @triton.autotune(
        configs=_configs(["BLOCK_D"], [(16, 4, 2), (16, 8, 2), (32, 8, 2), (32, 4, 3), (64, 8, 3)]),
        key=["L", "M", "D", "PRECISION"],
    )
    @triton.jit
    def _match_kernel(
        w_ptr, t_ptr, best_ptr, arg_ptr,
        L, M, D, eps,
        stride_wb, stride_wl, stride_wd,
        stride_tb, stride_tm, stride_td,
        BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        tile = tl.program_id(2)
        words = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        tokens = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        word_ok = words < L
        token_ok = tokens < M
        dims = tl.arange(0, BLOCK_D)

        acc = tl.zeros([BLOCK_L, BLOCK_M], tl.float32)
        w_sq = tl.zeros([BLOCK_L], tl.float32)
        t_sq = tl.zeros([BLOCK_M], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + dims) < D
            w = tl.load(
                w_ptr + b * stride_wb + words[:, None] * stride_wl + (d0 + dims)[None, :] * stride_wd,
                mask=word_ok[:, None] & d_ok[None, :], other=0.0,
            )
            t = tl.load(
                t_ptr + b * stride_tb + tokens[:, None] * stride_tm + (d0 + dims)[None, :] * stride_td,
                mask=token_ok[:, None] & d_ok[None, :], other=0.0,
            )
            w_sq += _row_sq_sum(w)
            t_sq += _row_sq_sum(t)
            acc = _dot_nt(w, t, acc, PRECISION)

        # Ŵ T̂ᵀ = diag(1/|W|) W Tᵀ diag(1/|T|): normalising after the dot saves a second pass.
        sim = acc * _inv_norm(w_sq, eps)[:, None] * _inv_norm(t_sq, eps)[None, :]
        sim = tl.where(token_ok[None, :], sim, float("-inf"))
        best, arg = tl.max(sim, axis=1, return_indices=True)  # ties: lowest token
        out = (b * tl.num_programs(2) + tile) * L + words
        tl.store(best_ptr + out, best, mask=word_ok)
        tl.store(arg_ptr + out, arg + tile * BLOCK_M, mask=word_ok)

    @triton.jit
    def _best_match(best_ptr, arg_ptr, b, words, L, n_tiles):
        """Fold the per-token-tile (max, argmax) partials of these words; ties keep the earlier tile."""
        word_ok = words < L
        best = tl.load(best_ptr + b * n_tiles * L + words, mask=word_ok, other=0.0)
        arg = tl.load(arg_ptr + b * n_tiles * L + words, mask=word_ok, other=0)
        for tile in range(1, n_tiles):
            offs = (b * n_tiles + tile) * L + words
            tile_best = tl.load(best_ptr + offs, mask=word_ok, other=0.0)
            tile_arg = tl.load(arg_ptr + offs, mask=word_ok, other=0)
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            arg = tl.where(better, tile_arg, arg)
        return best, arg

    @triton.autotune(
        configs=_configs(["BLOCK_D"], [(16, 4, 2), (16, 8, 2), (32, 4, 2), (32, 8, 2)]),
        key=["L", "D", "PRECISION"],
    )
    @triton.jit
    def _gram_kernel(
        w_ptr, z_ptr, mask_ptr, best_ptr, arg_ptr,
        diff_ptr, r_ptr, loss_ptr, idx_ptr, gscale_ptr,
        L, D, n_tiles, eps,
        stride_wb, stride_wl, stride_wd,
        stride_zb, stride_zm, stride_zd,
        BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        row_block = tl.program_id(1)
        col_block = tl.program_id(2)
        rows = row_block * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = col_block * BLOCK_L + tl.arange(0, BLOCK_L)
        row_ok = rows < L
        col_ok = cols < L
        dims = tl.arange(0, BLOCK_D)

        v_row, a_row = _best_match(best_ptr, arg_ptr, b, rows, L, n_tiles)
        v_col, a_col = _best_match(best_ptr, arg_ptr, b, cols, L, n_tiles)

        q_raw = tl.zeros([BLOCK_L, BLOCK_L], tl.float32)
        p_raw = tl.zeros([BLOCK_L, BLOCK_L], tl.float32)
        w_sq_row = tl.zeros([BLOCK_L], tl.float32)
        w_sq_col = tl.zeros([BLOCK_L], tl.float32)
        z_sq_row = tl.zeros([BLOCK_L], tl.float32)
        z_sq_col = tl.zeros([BLOCK_L], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + dims
            row_mask = row_ok[:, None] & (d < D)[None, :]
            col_mask = col_ok[:, None] & (d < D)[None, :]
            w_base = w_ptr + b * stride_wb + d[None, :] * stride_wd
            w_row = tl.load(w_base + rows[:, None] * stride_wl, mask=row_mask, other=0.0)
            w_col = tl.load(w_base + cols[:, None] * stride_wl, mask=col_mask, other=0.0)
            z_base = z_ptr + b * stride_zb + d[None, :] * stride_zd
            z_row = tl.load(z_base + a_row[:, None] * stride_zm, mask=row_mask, other=0.0)
            z_col = tl.load(z_base + a_col[:, None] * stride_zm, mask=col_mask, other=0.0)
            w_sq_row += _row_sq_sum(w_row)
            w_sq_col += _row_sq_sum(w_col)
            z_sq_row += _row_sq_sum(z_row)
            z_sq_col += _row_sq_sum(z_col)
            q_raw = _dot_nt(w_row, w_col, q_raw, PRECISION)
            p_raw = _dot_nt(z_row, z_col, p_raw, PRECISION)

        # Rows and columns are scaled after the dots, as in the match kernel: the Gram of
        # scaled rows is the scaled Gram. Padded words (mask 0) and rows past L scale to 0.
        m_row = tl.load(mask_ptr + b * L + rows, mask=row_ok, other=0.0)
        m_col = tl.load(mask_ptr + b * L + cols, mask=col_ok, other=0.0)
        gscale_row = _code_scale(v_row, z_sq_row, m_row, eps)
        gscale_col = _code_scale(v_col, z_sq_col, m_col, eps)
        p = p_raw * gscale_row[:, None] * gscale_col[None, :]
        q = q_raw * (m_row * _inv_norm(w_sq_row, eps))[:, None] * (m_col * _inv_norm(w_sq_col, eps))[None, :]
        diff = p - q

        both_ok = row_ok[:, None] & col_ok[None, :]
        tl.store(diff_ptr + b * L * L + rows[:, None] * L + cols[None, :], diff, mask=both_ok)
        n_blocks = tl.num_programs(1)
        tl.store(loss_ptr + (b * n_blocks + row_block) * n_blocks + col_block, tl.sum(diff * diff))
        # r_l = Ĝ_l · (D Ĝ)_l over this column block; the normalisation's projection term
        # vanishes where F.normalize clamps (|u| <= eps), hence the zero there.
        r = tl.where(tl.abs(v_row) * tl.sqrt(z_sq_row) > eps, tl.sum(diff * p, axis=1), 0.0)
        tl.store(r_ptr + (b * n_blocks + col_block) * L + rows, r, mask=row_ok)
        if col_block == 0:  # one program per row block stores the per-word state
            tl.store(idx_ptr + b * L + rows, a_row, mask=row_ok)
            tl.store(gscale_ptr + b * L + rows, gscale_row, mask=row_ok)

    @triton.autotune(
        configs=_configs(["BLOCK_D", "BLOCK_M"], [(32, 32, 8, 2), (32, 64, 8, 2), (16, 64, 4, 2), (16, 32, 4, 2)]),
        key=["L", "M", "D", "PRECISION"],
    )
    @triton.jit
    def _grad_kernel(
        z_ptr, diff_ptr, r_ptr, idx_ptr, gscale_ptr, grad_ptr, dz_ptr,
        L, M, D, n_word_blocks, scale,
        stride_zb, stride_zm, stride_zd,
        WORDS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        words = tl.arange(0, WORDS)
        word_ok = words < L
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < D
        z_base = z_ptr + b * stride_zb + d[None, :] * stride_zd

        arg = tl.load(idx_ptr + b * L + words, mask=word_ok, other=-1)  # -1 matches no token
        gscale = tl.load(gscale_ptr + b * L + words, mask=word_ok, other=0.0)
        r = tl.zeros([WORDS], tl.float32)
        for block in range(n_word_blocks):
            r += tl.load(r_ptr + (b * n_word_blocks + block) * L + words, mask=word_ok, other=0.0)
        z = tl.load(z_base + arg[:, None] * stride_zm, mask=word_ok[:, None] & d_ok[None, :], other=0.0)
        g_hat = z.to(tl.float32) * gscale[:, None]

        # D Ĝ over column blocks of D, re-gathering those words' Ĝ rows (cached) rather than
        # holding the whole (L, L) D in registers.
        d_g = tl.zeros([WORDS, BLOCK_D], tl.float32)
        for k0 in range(0, L, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < L
            diff = tl.load(
                diff_ptr + b * L * L + words[:, None] * L + ks[None, :],
                mask=word_ok[:, None] & k_ok[None, :], other=0.0,
            )
            arg_k = tl.load(idx_ptr + b * L + ks, mask=k_ok, other=0)
            gscale_k = tl.load(gscale_ptr + b * L + ks, mask=k_ok, other=0.0)
            z_k = tl.load(z_base + arg_k[:, None] * stride_zm, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            d_g = tl.dot(diff, z_k.to(tl.float32) * gscale_k[:, None], d_g, input_precision=PRECISION)
        c = tl.load(grad_ptr) * scale
        d_z = (c * gscale)[:, None] * (d_g - r[:, None] * g_hat)

        for m0 in range(0, M, BLOCK_M):
            tokens = m0 + tl.arange(0, BLOCK_M)
            one_hot = (tokens[:, None] == arg[None, :]).to(tl.float32)
            d_codes = tl.dot(one_hot, d_z, input_precision="ieee")
            tl.store(
                dz_ptr + (b * M + tokens[:, None]) * D + d[None, :],
                d_codes.to(dz_ptr.dtype.element_ty),
                mask=(tokens < M)[:, None] & d_ok[None, :],
            )


class RelationState(NamedTuple):
    """What the backward needs from the forward, all per caption and small (no M or Dt axis)."""

    idx: torch.Tensor  # (B, L) int32: best-matching token per word
    gscale: torch.Tensor  # (B, L) fp32: Ĝ_l = codes[b, idx_l] * gscale_l
    r: torch.Tensor  # (B, word blocks, L) fp32: partial sums of r_l = Σ_k D_lk P_lk
    diff: torch.Tensor  # (B, L, L) fp32: D = P - Q


def relation_forward(
    words: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, codes: torch.Tensor, eps: float
) -> tuple[torch.Tensor, RelationState]:
    """Loss (fp32 scalar) and the backward's state.

    words (B, L, Dt), tokens and codes (B, M, Dt): fp32/fp16/bf16, any strides;
    mask (B, L) contiguous fp32 of 0/1. L must be at most ``MAX_WORDS``.
    """
    B, L, D = words.shape
    M = tokens.shape[1]
    if L > MAX_WORDS:
        raise ValueError(f"the Triton relation kernels take at most {MAX_WORDS} words per caption, got {L}")
    dev = words.device
    n_tiles = triton.cdiv(M, TOKEN_BLOCK)
    n_word_blocks = triton.cdiv(L, WORD_BLOCK)
    precision = fp32_dot_precision()

    best = torch.empty((B, n_tiles, L), device=dev, dtype=torch.float32)
    arg = torch.empty((B, n_tiles, L), device=dev, dtype=torch.int32)
    _match_kernel[(B, n_word_blocks, n_tiles)](
        words, tokens, best, arg,
        L, M, D, eps,
        *words.stride(), *tokens.stride(),
        BLOCK_L=WORD_BLOCK, BLOCK_M=TOKEN_BLOCK, PRECISION=precision,
    )

    state = RelationState(
        idx=torch.empty((B, L), device=dev, dtype=torch.int32),
        gscale=torch.empty((B, L), device=dev, dtype=torch.float32),
        r=torch.empty((B, n_word_blocks, L), device=dev, dtype=torch.float32),
        diff=torch.empty((B, L, L), device=dev, dtype=torch.float32),
    )
    loss_parts = torch.empty((B, n_word_blocks, n_word_blocks), device=dev, dtype=torch.float32)
    _gram_kernel[(B, n_word_blocks, n_word_blocks)](
        words, codes, mask, best, arg,
        state.diff, state.r, loss_parts, state.idx, state.gscale,
        L, D, n_tiles, eps,
        *words.stride(), *codes.stride(),
        BLOCK_L=WORD_BLOCK, PRECISION=precision,
    )
    # A deterministic sum of B · blocks² partials instead of atomics on one scalar.
    return loss_parts.sum() / (B * L * L), state


def relation_backward(codes: torch.Tensor, state: RelationState, grad_loss: torch.Tensor) -> torch.Tensor:
    """dL/dcodes, (B, M, Dt) contiguous in codes' dtype, for the upstream scalar ``grad_loss``."""
    B, M, D = codes.shape
    L = state.idx.shape[1]
    d_codes = torch.empty((B, M, D), device=codes.device, dtype=codes.dtype)
    grid = lambda meta: (B, triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
    _grad_kernel[grid](
        codes, state.diff, state.r, state.idx, state.gscale,
        grad_loss.to(torch.float32).contiguous(), d_codes,
        L, M, D, state.r.shape[1], 4.0 / (B * L * L),
        *codes.stride(),
        WORDS=max(16, triton.next_power_of_2(L)), BLOCK_K=WORD_BLOCK, PRECISION=fp32_dot_precision(),
    )
    return d_codes
