"""Fused residual quantization: every stage's search in one pass over the rows.

Each program owns BLOCK_N rows and keeps their residual r (BLOCK_N, BLOCK_D) on chip, in
fp32, for all L stages. Stage l: x_l = r (or r/|r| for cosine codes), the nearest code of
codebook l by ``kernels.nearest.search_resident_rows`` (codes streamed in BLOCK_K tiles,
score ``|e|^2 - 2 x·e``, ties to the lowest index), then the chosen code q is gathered (one
row of codebook l per row), (x_l - q)^2 summed per row, and r -= q. The program writes the L
indices, the per-row squared errors of each stage (what the losses need) and, at the end,
the quantized sum x - r_L (x is re-read once rather than kept in registers). The residual
never goes back to memory between stages; the codebooks are read once per program and stage.

The codebook is not split across programs (unlike the nearest kernel): stage l + 1 needs
stage l's argmin of the same row, so a split would need a grid-wide reduction per stage.
Rows wider than ``MAX_RESIDENT_D`` do not fit on chip (the residual takes BLOCK_N·BLOCK_D
fp32 registers), nor, for fp32 codes with 3xTF32 products before sm_90, rows wider than
``MAX_RESIDENT_D_SPLIT_SYNC`` (there the split operands of ``mma.sync`` live in registers
too); ``fits_on_chip`` tells ``lgvq.ops.residual`` to search those stage by stage with the
nearest kernel instead.

Resources: the residual costs ``BLOCK_N·BLOCK_D / (32·num_warps)`` registers per thread, so
configs are pruned to at most ``RESIDENT_ELEMENTS`` elements per program, then by shared
memory with the nearest kernel's model (x tile once + ``num_stages`` code tiles). Tile lists
and ``MAX_RESIDENT_D`` come from sm_90 compiles of the candidates (``bench/compile_check.py``):
wider rows or wider code tiles spilled hundreds to thousands of bytes.
"""

from __future__ import annotations

import torch

from . import HAS_TRITON, INTERPRET, fp32_dot_precision
from .nearest import device_arch, n_bucket, shared_memory_bytes, shared_memory_limit

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .nearest import search_resident_rows

#: Widest row (elements, after rounding up to a power of two) held on chip: at d = 256 every
#: config spills on sm_90 (the residual, the operand copy of x_l and the dot's accumulators).
MAX_RESIDENT_D = 128
#: The same for fp32 codes with 3xTF32 products before sm_90 (``mma.sync``: the big and small
#: halves of both operands sit in registers beside the residual). At d = 128 every config
#: spilled 1.1-1.5 KB on sm_80, and a 32-row tile still 0.8-0.9 KB.
MAX_RESIDENT_D_SPLIT_SYNC = 64
#: BLOCK_N·BLOCK_D of the resident residual: 32 fp32 registers per thread with 8 warps.
RESIDENT_ELEMENTS = 8192
#: (BLOCK_N, BLOCK_K, num_warps, num_stages) for fp32 operands (TF32 and 3xTF32: the split
#: operands need 8 warps and narrow code tiles to stay clear of spills) and for fp16/bf16;
#: the prune keeps those whose resident rows fit.
FP32_TILES = [
    (128, 32, 8, 3),
    (64, 32, 8, 3),
    (64, 32, 8, 2),
]
HALF_TILES = [
    (128, 64, 8, 3),
    (64, 64, 8, 3),
    (32, 64, 4, 3),
]
#: The interpreter: one small config; small tiles make tiny test shapes cross code tiles.
INTERPRET_TILE = (16, 32, 1, 1)


def block_d_for(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def fits_on_chip(d: int, dtype: torch.dtype, device: torch.device | None = None) -> bool:
    """Whether rows of d elements of ``dtype`` codes stay on chip on ``device``'s arch."""
    split_sync = dtype == torch.float32 and fp32_dot_precision() == "tf32x3" and device_arch(device) < 90
    return block_d_for(d) <= (MAX_RESIDENT_D_SPLIT_SYNC if split_sync else MAX_RESIDENT_D)


def _config(tile):
    block_n, block_k, warps, stages = tile
    return triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k}, num_warps=warps, num_stages=stages)


def _configs():
    return [_config(INTERPRET_TILE)] if INTERPRET else [_config(t) for t in FP32_TILES + HALF_TILES]


def _tile(config):
    return (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages)


def launchable_configs(configs, block_d: int, elem_size: int, precision: str, limit: int):
    """The configs listed for the operand dtype whose resident residual and shared memory fit
    rows of ``block_d``; the last listed tile when none does."""
    listed = FP32_TILES if elem_size == 4 else HALF_TILES
    kept = [
        c for c in configs
        if _tile(c) in listed
        and c.kwargs["BLOCK_N"] * block_d <= RESIDENT_ELEMENTS
        and shared_memory_bytes(c, block_d, True, elem_size, precision) <= limit
    ]
    return kept or [_config(listed[-1])]


def _prune_configs(configs, named_args, **kwargs):
    if INTERPRET:
        return configs
    e = named_args["e_ptr"]
    return launchable_configs(configs, kwargs["BLOCK_D"], e.element_size(), kwargs["PRECISION"],
                              shared_memory_limit(e.device))


if HAS_TRITON:

    @triton.autotune(
        configs=_configs(),
        key=["K", "D", "L", "N_BUCKET", "PRECISION", "COS"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit(do_not_specialize=["N_BUCKET"])
    def _residual_kernel(
        x_ptr, e_ptr, enorm_ptr, quant_ptr, index_ptr, sqerr_ptr,
        N, K, D, L, N_BUCKET,
        stride_x, stride_el, stride_ek, stride_ol, stride_q,
        COS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)  # rows * stride passes 2^31 once N·d does
        dims = tl.arange(0, BLOCK_D)
        tile_ok = row_ok[:, None] & (dims[None, :] < D)
        x_tile_ptr = x_ptr + rows64[:, None] * stride_x + dims[None, :]
        residual = tl.load(x_tile_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        e_stage, enorm_stage = e_ptr, enorm_ptr  # advanced by one stage per step: no L·K·d offset
        for stage in range(L):
            if COS:
                norm = tl.sqrt(tl.sum(residual * residual, axis=1))
                x_l = residual / tl.maximum(norm, 1e-12)[:, None]
            else:
                x_l = residual
            _, idx = search_resident_rows(
                x_l.to(e_ptr.dtype.element_ty), e_stage, enorm_stage, 0, K, D, stride_ek,
                BLOCK_N, BLOCK_K, BLOCK_D, PRECISION, False,
            )
            code = tl.load(e_stage + idx.to(tl.int64)[:, None] * stride_ek + dims[None, :], mask=tile_ok, other=0.0)
            code = code.to(tl.float32)
            err = x_l - code
            tl.store(sqerr_ptr + rows64 * L + stage, tl.sum(err * err, axis=1), mask=row_ok)
            tl.store(index_ptr + rows64 * L + stage, idx.to(tl.int64), mask=row_ok)
            residual = residual - code
            e_stage += stride_el
            enorm_stage += stride_ol
        x = tl.load(x_tile_ptr, mask=tile_ok, other=0.0).to(tl.float32)
        quantized = (x - residual).to(quant_ptr.dtype.element_ty)
        tl.store(quant_ptr + rows64[:, None] * stride_q + dims[None, :], quantized, mask=tile_ok)


def residual_search(
    x: torch.Tensor, codes: torch.Tensor, offsets: torch.Tensor, cos: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused search over x (N, D) and codebooks (L, K, D) of one dtype
    (``fits_on_chip(D, codes.dtype, x.device)`` must hold; a stage stride of 0 shares one codebook).

    ``offsets`` (L, K) is what each stage's score adds per code (|e|^2, zeros for unit codes).
    Returns (x - r_L in x's dtype, indices (N, L) int64, squared errors (N, L) fp32).
    """
    n, d = x.shape
    num_stages, k, _ = codes.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    if codes.stride(2) != 1:
        codes = codes.contiguous()
    offsets = offsets.float().contiguous()
    quantized = torch.empty_like(x, memory_format=torch.contiguous_format)
    indices = torch.empty((n, num_stages), device=x.device, dtype=torch.int64)
    sqerr = torch.empty((n, num_stages), device=x.device, dtype=torch.float32)
    precision = fp32_dot_precision() if codes.dtype == torch.float32 else "ieee"

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    _residual_kernel[grid](
        x, codes, offsets, quantized, indices, sqerr,
        n, k, d, num_stages, n_bucket(n),
        x.stride(0), codes.stride(0), codes.stride(1), offsets.stride(0), quantized.stride(0),
        COS=cos, BLOCK_D=block_d_for(d), PRECISION=precision,
    )
    return quantized, indices, sqerr
