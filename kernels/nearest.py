"""Fused nearest-code search: distance + running argmin, the N×K matrix never written.

Each program owns BLOCK_N rows of x and streams its slice of the codebook in BLOCK_K
tiles. Per tile it computes ``score = |e|^2 - 2 x·e`` (x's own norm is constant per row,
so it does not change the argmin and is added back by the caller) with a tiled ``tl.dot``
accumulating in fp32, and folds the tile into a running (min, argmin).

When N is small the row blocks alone cannot fill the GPU, so the codebook is split
across a second grid axis: every split writes its own (score, index) per row and the
launcher reduces over splits (a two-stage reduction over an (S, N) buffer, S small).
Ties resolve to the lowest code index at every stage, matching ``torch.argmin``.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, fp32_dot_precision

if HAS_TRITON:
    import triton
    import triton.language as tl

# Every split's code range is a multiple of this, so it is a multiple of every BLOCK_K.
SPLIT_ALIGN = 128
# d up to this is held in one tile (x loaded once per program); larger d is tiled.
MAX_SINGLE_D = 256
TILED_BLOCK_D = 64


def _configs():
    if INTERPRET:  # the interpreter is slow: one small config, no tuning
        return [triton.Config({"BLOCK_N": 16, "BLOCK_K": 32}, num_warps=1)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [
            (128, 128, 8, 3),
            (128, 64, 4, 3),
            (64, 128, 4, 3),
            (128, 128, 8, 2),
            (64, 64, 4, 4),
            (256, 64, 8, 3),
            (64, 256, 8, 3),
            (32, 128, 4, 4),
        ]
    ]


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles whose operands do not fit in shared memory for this d and dtype."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    elem = named_args["x_ptr"].element_size()
    budget = 200 * 1024
    kept = [
        c for c in configs
        if (c.kwargs["BLOCK_N"] + c.kwargs["BLOCK_K"]) * block_d * elem * max(c.num_stages, 1) <= budget
    ]
    return kept or configs[-1:]


if HAS_TRITON:

    @triton.autotune(
        configs=_configs(),
        key=["K", "D", "BLOCK_D", "PRECISION"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit
    def _nearest_kernel(
        x_ptr, e_ptr, enorm_ptr, score_out_ptr, index_out_ptr,
        N, K, D, codes_per_split,
        stride_x, stride_e,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        SINGLE_D: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        dims = tl.arange(0, BLOCK_D)
        k_begin = split * codes_per_split
        k_end = tl.minimum(k_begin + codes_per_split, K)

        if SINGLE_D:  # the whole row fits one tile: load x once, reuse it for every code tile
            x_tile = tl.load(
                x_ptr + rows[:, None] * stride_x + dims[None, :],
                mask=row_ok[:, None] & (dims[None, :] < D), other=0.0,
            )

        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(k_begin, k_end, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < k_end
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            if SINGLE_D:
                e_tile = tl.load(
                    e_ptr + codes[:, None] * stride_e + dims[None, :],
                    mask=code_ok[:, None] & (dims[None, :] < D), other=0.0,
                )
                acc = tl.dot(x_tile, tl.trans(e_tile), acc, input_precision=PRECISION)
            else:
                for d0 in range(0, D, BLOCK_D):
                    d_ok = (d0 + dims) < D
                    x_part = tl.load(
                        x_ptr + rows[:, None] * stride_x + (d0 + dims)[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0,
                    )
                    e_part = tl.load(
                        e_ptr + codes[:, None] * stride_e + (d0 + dims)[None, :],
                        mask=code_ok[:, None] & d_ok[None, :], other=0.0,
                    )
                    acc = tl.dot(x_part, tl.trans(e_part), acc, input_precision=PRECISION)
            enorm = tl.load(enorm_ptr + codes, mask=code_ok, other=0.0)
            score = enorm[None, :] - 2.0 * acc
            score = tl.where(code_ok[None, :], score, float("inf"))
            tile_best, tile_arg = tl.min(score, axis=1, return_indices=True)
            better = tile_best < best  # strict: an earlier tile wins ties
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_arg + k0, best_idx)

        out = split * N + rows
        tl.store(score_out_ptr + out, best, mask=row_ok)
        tl.store(index_out_ptr + out, best_idx, mask=row_ok)


def _auto_splits(n: int, k: int, device: torch.device) -> int:
    """Enough codebook splits that (row blocks × splits) covers every SM about twice."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n, 128)
    if row_blocks >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, row_blocks), triton.cdiv(k, 2 * SPLIT_ALIGN)))


def nearest_code_search(
    x: torch.Tensor, codebook: torch.Tensor, code_sq_norms: torch.Tensor, num_splits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the search over row-major x (N, D) and codebook (K, D) of one dtype.

    Returns (score, index): score (N,) fp32 = min_k |e_k|^2 - 2 x·e_k, index (N,) int64.
    ``code_sq_norms`` (K,) fp32 is what the score adds per code (|e|^2 for L2, zeros for
    normalised inputs). ``num_splits`` overrides the automatic codebook split (tests).
    """
    n, d = x.shape
    k = codebook.shape[0]
    if num_splits is None:
        num_splits = _auto_splits(n, k, x.device)
    codes_per_split = triton.cdiv(triton.cdiv(k, num_splits), SPLIT_ALIGN) * SPLIT_ALIGN
    num_splits = triton.cdiv(k, codes_per_split)
    single_d = d <= MAX_SINGLE_D
    block_d = max(16, triton.next_power_of_2(d)) if single_d else TILED_BLOCK_D

    scores = torch.empty((num_splits, n), device=x.device, dtype=torch.float32)
    indices = torch.empty((num_splits, n), device=x.device, dtype=torch.int32)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), num_splits)  # noqa: E731
    _nearest_kernel[grid](
        x, codebook, code_sq_norms, scores, indices,
        n, k, d, codes_per_split,
        x.stride(0), codebook.stride(0),
        BLOCK_D=block_d, SINGLE_D=single_d, PRECISION=fp32_dot_precision() if x.dtype == torch.float32 else "ieee",
    )
    if num_splits == 1:
        return scores[0], indices[0].long()
    best, split = scores.min(dim=0)  # first minimum: the lowest split, so the lowest index
    return best, indices.gather(0, split.unsqueeze(0)).squeeze(0).long()
