"""Fused nearest-code search: distance + running argmin, the N×K matrix never written.

Math: for each row x, ``argmin_k |x - e_k|^2 = argmin_k score_k`` with
``score_k = |e_k|^2 - 2 x·e_k`` (x's own norm is constant per row, so it does not change the
argmin and is added back by the caller); equivalently ``argmax_k (x·e_k - |e_k|^2 / 2)``.
Ties resolve to the lowest code index at every stage, matching ``torch.argmin``.
``argmin_tolerance`` bounds how far from the exact (fp64) optimum the chosen code may be.

Precision (``fp32_dot_precision``): fp16/bf16 products are exact in the fp32 accumulator.
fp32 inputs use 3xTF32 (``"tf32x3"``: tensor cores, about fp32 accuracy) while torch's
``float32_matmul_precision`` is ``"highest"`` and TF32 once the user allows it. Plain
IEEE fp32 FMA dots are never chosen: on sm_90 they reach 255 registers and spill, and take
tens of seconds to compile per config.

Tiling: each program owns BLOCK_N rows of x and streams its slice of the codebook in BLOCK_K
tiles, computing the tile's dot products with ``tl.dot`` (fp32 accumulator) and folding the
tile into a running best per row. Two epilogues, both autotune candidates (``BIASED``):
the plain one computes ``score = |e|^2 - 2·acc`` per element, masks codes past the range and
keeps a running (min, argmin); the short one starts the accumulator at ``-|e|^2 / 2`` (codes
past the range at -inf), so the dot itself yields ``x·e - |e|^2 / 2`` and the epilogue is a
running (max, argmax) alone, turned back into a score at the store.

When N is small the row blocks alone cannot fill the GPU, so the codebook is split across a
second grid axis: every split writes its own (score, index) per row and the launcher reduces
over splits (a two-stage reduction over an (S, N) buffer, S small), reading the split count
its own launch ran with.

Two loop shapes (``SINGLE_D``): when a padded row takes at most ``MAX_SINGLE_D_BYTES``
(fp32 d ≤ 128, fp16/bf16 d ≤ 256), the x tile is loaded once and stays in shared memory
for every code tile, and the code loop is the software-pipelined one (``SCHEDULE`` 0) or
prefetches the next code tile into registers before each tile's MMA (``SCHEDULE`` 1).
Wider rows are cut into ``TILED_BLOCK_D`` slices and the d loop is the pipelined one (the
prune keeps ``SCHEDULE`` 0 only); its prologue restarts
for every code tile, amortised over at least 4 (fp32) or 5 (16-bit) d steps. The argmin
epilogue runs on the CUDA cores after each tile's dot; the compile gate reports each
variant's loop instruction mix (MMAs, waits, copies, the rest).

Resources: every autotune config is pruned by the shared memory it needs
(``shared_memory_bytes``) against the device's real per-block limit, and by architecture
(3xTF32 on mma.sync, before sm_90, gets tiles of 16 accumulators per thread); when none
fits, the smallest tile (``FALLBACK``), which fits every d, is used.
``bench/compile_check.py`` compiles every config the launcher can choose for sm_90 and sm_80
and checks this model against ptxas.
"""

from __future__ import annotations

import functools

import torch

from . import HAS_TRITON, INTERPRET, fp32_dot_precision

if HAS_TRITON:
    import triton
    import triton.language as tl

#: A padded row of at most this many bytes is held whole (x loaded once per program).
MAX_SINGLE_D_BYTES = 512
#: The d slice of the tiled loop for wider rows.
TILED_BLOCK_D = 64
#: Smallest d tile ``tl.dot`` accepts for every dtype.
MIN_BLOCK_D = 16
#: Per-block shared memory limit (bytes, opt-in maximum) by compute capability, for
#: offline use (the compile gate); on a GPU the device's own value is read.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DEFAULT_ARCH = 90
#: Codebook splits aim at this many resident programs per SM.
PROGRAMS_PER_SM = 2

#: (BLOCK_N, BLOCK_K, num_warps, num_stages, BIASED, SCHEDULE). BLOCK_N ≥ 64 with 4 or 8
#: warps lets Triton emit wgmma on Hopper for bf16/fp16 and tf32; the prune keeps the ones
#: that fit. BIASED = 1 is the short epilogue (see the kernel), offered beside the plain one
#: for the large tiles, where the epilogue is the larger share of the loop. Two deeper
#: pipelines for the resident-row loop (``search_resident_rows``) are offered beside the
#: 2-stage 128×128 tile, whose copies never overlap its MMA or epilogue: 64-wide code tiles in
#: 4 stages (three copies in flight at the wait; a 128×128 tile cannot take 3 stages at
#: d = 256), and SCHEDULE = 1, the next 128×128 tile prefetched into registers before the
#: current one's MMA. The autotuner picks; the compile gate shows each one's loop.
GPU_TILES = [
    (128, 128, 8, 3, 0, 0),
    (128, 128, 8, 2, 0, 0),
    (128, 64, 4, 3, 0, 0),
    (64, 128, 4, 3, 0, 0),
    (256, 64, 8, 3, 0, 0),
    (64, 64, 4, 4, 0, 0),
    (64, 64, 4, 2, 0, 0),
    (128, 128, 8, 3, 1, 0),
    (128, 128, 8, 2, 1, 0),
    (128, 64, 4, 3, 1, 0),
    (128, 64, 8, 4, 1, 0),
    (128, 128, 8, 1, 1, 1),
]
#: 3xTF32 holds hi and lo parts of the operands in registers: at most 32 accumulators per
#: thread (BLOCK_N·BLOCK_K / threads), or the tiled loop spills (ptxas, sm_90).
TF32X3_TILES = [
    (128, 64, 8, 3, 0, 0),
    (64, 128, 8, 3, 0, 0),
    (64, 64, 4, 4, 0, 0),
    (64, 64, 4, 2, 0, 0),
    (128, 64, 8, 3, 1, 0),
]
#: mma.sync (before sm_90) keeps the 3xTF32 operand fragments in registers too: 32-wide code
#: tiles (16 accumulators per thread) stay within 255 registers on sm_80, 64-wide ones spill
#: 250-12,000 B even with 8 warps (ptxas).
TF32X3_MMA_SYNC_TILES = [
    (128, 32, 8, 3, 0, 0),
    (64, 32, 4, 3, 0, 0),
    (64, 32, 4, 2, 0, 0),
]
#: Used only when no tile above fits: the smallest operand tiles, within every limit
#: above for any d (the tiled loop bounds BLOCK_D).
FALLBACK = (32, 32, 4, 2, 0, 0)
#: The interpreter is slow: one small config, no tuning; small tiles make tiny test
#: shapes cross several code tiles.
INTERPRET_TILE = (16, 32, 1, 1, 0, 0)


def _config(tile):
    block_n, block_k, warps, stages, biased, schedule = tile
    return triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "BIASED": biased, "SCHEDULE": schedule},
                         num_warps=warps, num_stages=stages)


def tiles_for(precision: str, arch: int):
    if precision != "tf32x3":
        return GPU_TILES
    return TF32X3_TILES if arch >= 90 else TF32X3_MMA_SYNC_TILES


def _configs():
    if INTERPRET:
        return [_config(INTERPRET_TILE)]
    return [_config(t) for t in dict.fromkeys(GPU_TILES + TF32X3_TILES + TF32X3_MMA_SYNC_TILES)]


def padded_d(d: int) -> int:
    """Row length the kernel sees: d rounded up to 16 elements (the launcher zero-pads), so
    rows are 16-byte aligned for asynchronous copies and the loads vectorise."""
    return triton.cdiv(d, MIN_BLOCK_D) * MIN_BLOCK_D


def block_d_for(d: int, elem_size: int) -> tuple[int, bool]:
    """(BLOCK_D, SINGLE_D) the launcher uses for rows of d elements of ``elem_size`` bytes."""
    padded = max(MIN_BLOCK_D, triton.next_power_of_2(d))
    if padded * elem_size <= MAX_SINGLE_D_BYTES:
        return padded, True
    return TILED_BLOCK_D, False


def shared_memory_bytes(config, block_d: int, single_d: bool, elem_size: int, precision: str) -> int:
    """Upper bound on the shared memory one program of ``config`` uses.

    Operands: with SINGLE_D the x tile is staged once and the code tile is buffered
    ``num_stages`` times (the pipelined loop); tiled, both tiles are buffered per stage.
    (wgmma keeps ``num_stages`` buffers, mma.sync ``num_stages - 1``: the bound takes the
    larger.) 3xTF32 stages one more x and code tile for the split operands. The
    epilogue's cross-warp argmin needs a (score, index) pair per row and warp.
    """
    block_n, block_k = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
    stages = max(config.num_stages, 1)
    x_tile = block_n * block_d * elem_size
    code_tile = block_k * block_d * elem_size
    operands = x_tile + stages * code_tile if single_d else stages * (x_tile + code_tile)
    if precision == "tf32x3":
        operands += x_tile + code_tile
    return operands + block_n * config.num_warps * 8


def shared_memory_limit(device: torch.device | None = None) -> int:
    """Per-block shared memory (bytes) a kernel may use: the device's own opt-in limit on
    CUDA, else the table value for ``DEFAULT_ARCH``."""
    if device is not None and device.type == "cuda":
        return _cuda_shared_memory_limit(device.index if device.index is not None else torch.cuda.current_device())
    return SHARED_MEMORY_LIMIT[DEFAULT_ARCH]


@functools.lru_cache(maxsize=None)
def _cuda_shared_memory_limit(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", None)
    return limit or SHARED_MEMORY_LIMIT.get(props.major * 10 + props.minor, SHARED_MEMORY_LIMIT[80])


def device_arch(device: torch.device | None = None) -> int:
    """Compute capability as an int (90 for sm_90) of a CUDA device, else ``DEFAULT_ARCH``."""
    if device is not None and device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_ARCH


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def _tile(config):
    return (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages,
            config.kwargs["BIASED"], config.kwargs["SCHEDULE"])


def launchable_configs(configs, d: int, elem_size: int, precision: str, limit: int, arch: int):
    """The configs listed for ``precision`` on ``arch`` that fit ``limit`` for rows of d
    elements; the fallback when none does."""
    block_d, single_d = block_d_for(d, elem_size)
    listed = set(tiles_for(precision, arch))
    kept = [
        c for c in configs
        if _tile(c) in listed and (single_d or not c.kwargs["SCHEDULE"])  # the d loop has one schedule
        and shared_memory_bytes(c, block_d, single_d, elem_size, precision) <= limit
    ]
    return kept or [_config(FALLBACK)]


def _prune_configs(configs, named_args, **kwargs):
    if INTERPRET:
        return configs
    x = named_args["x_ptr"]
    return launchable_configs(
        configs, named_args["D"], x.element_size(), kwargs["PRECISION"], shared_memory_limit(x.device),
        device_arch(x.device),
    )


def n_bucket(n: int) -> int:
    """Autotune key for the row count: the best tile changes with how many row blocks
    there are, so N is tuned per power of two from 1024 to 2^20 (not on whatever N came first)."""
    return min(max(triton.next_power_of_2(n), 1024), 2**20)


if HAS_TRITON:

    @triton.jit
    def start_code_tile(codes, code_ok, enorm_ptr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        BIASED: tl.constexpr):
        """The accumulator a tile's dots add onto: zeros (plain), or -|e|²/2 per code (BIASED,
        so the dot itself yields x·e - |e|²/2 = -score/2; codes past the range start at -inf)."""
        if BIASED:
            enorm = tl.load(enorm_ptr + codes, mask=code_ok, other=float("inf"))
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32) - 0.5 * enorm[None, :]
        else:
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        return acc

    @triton.jit
    def fold_code_tile(acc, codes, code_ok, enorm_ptr, k0, best, best_idx, BIASED: tl.constexpr):
        """Fold one tile into the running best per row: plain, the (min, argmin) of
        ``|e|^2 - 2 x·e`` (codes outside ``code_ok`` score +inf); BIASED, the (max, argmax) of
        the accumulator, which already holds -score/2. Ties keep the earlier tile."""
        if BIASED:
            tile_best, tile_arg = tl.max(acc, axis=1, return_indices=True)
            better = tile_best > best  # strict: an earlier tile wins ties
        else:
            enorm = tl.load(enorm_ptr + codes, mask=code_ok, other=0.0)
            score = tl.where(code_ok[None, :], enorm[None, :] - 2.0 * acc, float("inf"))
            tile_best, tile_arg = tl.min(score, axis=1, return_indices=True)
            better = tile_best < best  # strict: an earlier tile wins ties
        return tl.where(better, tile_best, best), tl.where(better, tile_arg + k0, best_idx)

    @triton.jit
    def initial_best(BLOCK_N: tl.constexpr, BIASED: tl.constexpr):
        """The running best before any code: +inf for a minimum, -inf for BIASED's maximum."""
        if BIASED:
            best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        else:
            best = tl.full([BLOCK_N], float("inf"), tl.float32)
        return best, tl.zeros([BLOCK_N], tl.int32)

    @triton.jit
    def code_tile(k0, k_end, e_ptr, stride_e, BLOCK_K: tl.constexpr):
        """The codes [k0, k0 + BLOCK_K) of a tile, which of them lie before ``k_end``, and their
        row pointers (64-bit offsets: codes * stride passes 2^31 once K·d does)."""
        codes = k0 + tl.arange(0, BLOCK_K)
        return codes, codes < k_end, e_ptr + codes.to(tl.int64)[:, None] * stride_e

    @triton.jit
    def load_code_tile(k0, k_end, e_ptr, stride_e, D, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        """The codes [k0, k0 + BLOCK_K) whole (BLOCK_K, BLOCK_D); rows past ``k_end`` and
        columns past D read as zeros."""
        dims = tl.arange(0, BLOCK_D)
        _, code_ok, e_rows = code_tile(k0, k_end, e_ptr, stride_e, BLOCK_K)
        return tl.load(e_rows + dims[None, :], mask=code_ok[:, None] & (dims[None, :] < D), other=0.0)

    @triton.jit
    def fold_resident_tile(x_tile, e_tile, enorm_ptr, k0, k_end, best, best_idx,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                           BIASED: tl.constexpr):
        """One code tile's dots against the resident rows, folded into the running best."""
        codes = k0 + tl.arange(0, BLOCK_K)
        code_ok = codes < k_end
        acc = start_code_tile(codes, code_ok, enorm_ptr, BLOCK_N, BLOCK_K, BIASED)
        acc = tl.dot(x_tile, tl.trans(e_tile), acc, input_precision=PRECISION)
        return fold_code_tile(acc, codes, code_ok, enorm_ptr, k0, best, best_idx, BIASED)

    @triton.jit
    def search_resident_rows(
        x_tile, e_ptr, enorm_ptr, k_begin, k_end, D, stride_e,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
        BIASED: tl.constexpr, SCHEDULE: tl.constexpr = 0,
    ):
        """(best, index) over codes [k_begin, k_end) for a row tile held whole on chip
        (BLOCK_N, BLOCK_D), streaming the codes in BLOCK_K tiles. best is the min score (plain)
        or max of -score/2 (BIASED). Shared by the nearest kernel and the fused residual kernel.

        SCHEDULE 0: Triton's software pipeliner, ``num_stages`` code-tile buffers; it issues
        tile i + stages - 1's copy after tile i's epilogue and waits for tile i at the top,
        so with 2 stages no copy is in flight while a tile's MMA and epilogue run. SCHEDULE
        1 (prefetch): tile i + 1 is loaded into registers at the top of iteration i, before
        tile i's MMA and epilogue, which hide its latency; one shared-memory code buffer."""
        best, best_idx = initial_best(BLOCK_N, BIASED)
        if SCHEDULE == 1:
            e_next = load_code_tile(k_begin, k_end, e_ptr, stride_e, D, BLOCK_K, BLOCK_D)
            for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=1):
                e_tile = e_next
                e_next = load_code_tile(k0 + BLOCK_K, k_end, e_ptr, stride_e, D, BLOCK_K, BLOCK_D)
                best, best_idx = fold_resident_tile(x_tile, e_tile, enorm_ptr, k0, k_end, best, best_idx,
                                                    BLOCK_N, BLOCK_K, PRECISION, BIASED)
        else:
            for k0 in range(k_begin, k_end, BLOCK_K):
                e_tile = load_code_tile(k0, k_end, e_ptr, stride_e, D, BLOCK_K, BLOCK_D)
                best, best_idx = fold_resident_tile(x_tile, e_tile, enorm_ptr, k0, k_end, best, best_idx,
                                                    BLOCK_N, BLOCK_K, PRECISION, BIASED)
        return best, best_idx

    @triton.autotune(
        configs=_configs(),
        key=["K", "D", "N_BUCKET", "PRECISION"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )
    @triton.jit(do_not_specialize=["N_BUCKET"])
    def _nearest_kernel(
        x_ptr, e_ptr, enorm_ptr, score_out_ptr, index_out_ptr,
        N, K, D, N_BUCKET,
        stride_x, stride_e,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        SINGLE_D: tl.constexpr, PRECISION: tl.constexpr, BIASED: tl.constexpr, SCHEDULE: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        # Every split's range is a whole number of code tiles; the ranges cover K whatever
        # the split count (a trailing split may be empty and then reports +inf).
        codes_per_split = tl.cdiv(tl.cdiv(K, tl.num_programs(1)), BLOCK_K) * BLOCK_K
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        # 64-bit offsets: rows * stride and codes * stride pass 2^31 once N·d or K·d does.
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        dims = tl.arange(0, BLOCK_D)
        k_begin = split * codes_per_split
        k_end = tl.minimum(k_begin + codes_per_split, K)

        # BIASED keeps the running maximum of x·e - |e|²/2 (= -score/2), plain the running
        # minimum of score; the sign flips back at the store.
        if SINGLE_D:  # the whole row fits one tile: load x once, reuse it for every code tile
            x_tile = tl.load(x_rows + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < D), other=0.0)
            best, best_idx = search_resident_rows(
                x_tile, e_ptr, enorm_ptr, k_begin, k_end, D, stride_e, BLOCK_N, BLOCK_K, BLOCK_D, PRECISION,
                BIASED, SCHEDULE,
            )
        else:
            best, best_idx = initial_best(BLOCK_N, BIASED)
            for k0 in range(k_begin, k_end, BLOCK_K):
                codes, code_ok, e_rows = code_tile(k0, k_end, e_ptr, stride_e, BLOCK_K)
                acc = start_code_tile(codes, code_ok, enorm_ptr, BLOCK_N, BLOCK_K, BIASED)
                for d0 in range(0, D, BLOCK_D):
                    d_ok = (d0 + dims) < D
                    x_part = tl.load(x_rows + (d0 + dims)[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                    e_part = tl.load(e_rows + (d0 + dims)[None, :], mask=code_ok[:, None] & d_ok[None, :], other=0.0)
                    acc = tl.dot(x_part, tl.trans(e_part), acc, input_precision=PRECISION)
                best, best_idx = fold_code_tile(acc, codes, code_ok, enorm_ptr, k0, best, best_idx, BIASED)

        if BIASED:
            best = -2.0 * best
        out = split.to(tl.int64) * N + rows
        tl.store(score_out_ptr + out, best, mask=row_ok)
        tl.store(index_out_ptr + out, best_idx, mask=row_ok)


def auto_splits(n: int, k: int, block_n: int, block_k: int, sms: int) -> int:
    """Codebook splits so that (row blocks of ``block_n``) × splits covers every SM about
    ``PROGRAMS_PER_SM`` times; no split smaller than two code tiles."""
    row_blocks = triton.cdiv(n, block_n)
    if row_blocks >= PROGRAMS_PER_SM * sms:
        return 1
    return max(1, min(triton.cdiv(PROGRAMS_PER_SM * sms, row_blocks), triton.cdiv(k, 2 * block_k)))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count_of(device: torch.device) -> int | None:
    """SMs of a CUDA device, None elsewhere (no automatic split)."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _split_grid(n: int, k: int, device: torch.device, num_splits: int | None):
    """Grid for the chosen config (the split count follows its BLOCK_N and BLOCK_K), the split
    count as a function of a config, and this launch's own record of the count it launched
    with: the grid is evaluated for the config that runs, so concurrent searches (threads,
    streams) never read each other's choice."""
    sms = _sm_count_of(device) if num_splits is None else None
    launched = {}

    def splits(meta):
        if num_splits is not None:
            return num_splits
        return 1 if sms is None else auto_splits(n, k, meta["BLOCK_N"], meta["BLOCK_K"], sms)

    def grid(meta):
        launched["splits"] = splits(meta)
        return (triton.cdiv(n, meta["BLOCK_N"]), launched["splits"])

    return grid, splits, launched


def argmin_tolerance(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> torch.Tensor:
    """Per row of x, how much larger than the optimum the chosen code's exact squared
    distance may be: ``2·(d + 2)·u·(max_k |e_k|^2 + 2 |x| max_k |e_k|)``.

    Both compared scores ``|e|^2 - 2 x·e`` carry an fp32 dot-product error of at most
    ``(d + 2)·u`` times that magnitude, with u the unit roundoff of the products'
    inputs: 2^-23 for fp16/bf16 (exact products summed in fp32 on tensor cores, which
    truncate rather than round: one ulp, not half; measured against the rounded inputs),
    2^-10 for TF32 (operands may be truncated, not rounded, to 10 mantissa bits) and 2^-18
    for 3xTF32 (the three products drop the lo·lo term and truncate both lo parts: about
    3·2^-20 per product); ``"ieee"`` fp32 (how the CPU interpreter computes every dot) is 2^-24.
    """
    if x.dtype == torch.float32:
        unit = {"tf32": 2.0**-10, "tf32x3": 2.0**-18, "ieee": 2.0**-24}[precision]
    else:
        unit = 2.0**-23
    x64, e64 = x.double(), codebook.double()
    e_norm = e64.norm(dim=1).max()
    return 2 * (x.shape[1] + 2) * unit * (e_norm**2 + 2 * x64.norm(dim=1) * e_norm)


def nearest_code_search(
    x: torch.Tensor, codebook: torch.Tensor, code_sq_norms: torch.Tensor, num_splits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the search over x (N, D) and codebook (K, D) of one dtype, unit stride along D
    (rows are zero-padded to ``padded_d`` here when D is not a multiple of 16).

    Returns (score, index): score (N,) fp32 = min_k |e_k|^2 - 2 x·e_k, index (N,) int64.
    ``code_sq_norms`` (K,) fp32 is what the score adds per code (|e|^2 for L2, zeros for
    normalised inputs). ``num_splits`` overrides the automatic codebook split (tests).
    """
    n, d = x.shape
    k = codebook.shape[0]
    if d != padded_d(d):  # zero columns change no dot product
        x = torch.nn.functional.pad(x, (0, padded_d(d) - d))
        codebook = torch.nn.functional.pad(codebook, (0, padded_d(d) - d))
        d = padded_d(d)
    block_d, single_d = block_d_for(d, x.element_size())
    grid, splits, launched = _split_grid(n, k, x.device, num_splits)
    # One row per split for the smallest tiles, the most splits any config can ask for.
    max_splits = max(splits(c.all_kwargs()) for c in _nearest_kernel.configs + [_config(FALLBACK)])
    scores = torch.empty((max_splits, n), device=x.device, dtype=torch.float32)
    indices = torch.empty((max_splits, n), device=x.device, dtype=torch.int32)
    precision = fp32_dot_precision() if x.dtype == torch.float32 else "ieee"
    _nearest_kernel[grid](
        x, codebook, code_sq_norms, scores, indices,
        n, k, d, n_bucket(n),
        x.stride(0), codebook.stride(0),
        BLOCK_D=block_d, SINGLE_D=single_d, PRECISION=precision,
    )
    used = launched["splits"]  # the last grid evaluated is the launched config's
    if used == 1:
        return scores[0], indices[0].long()
    best, split = scores[:used].min(dim=0)  # first minimum: the lowest split, so the lowest index
    return best, indices[:used].gather(0, split.unsqueeze(0)).squeeze(0).long()
