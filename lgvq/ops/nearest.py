"""Nearest-code search: ``nearest_code(x, codebook, metric)``.

idx_i = argmin_k |x_i − e_k|² = argmin_k (|e_k|² − 2 x_i·e_k) (``l2``; ``cos`` scores the
l2-normalised rows by −2 x_i·e_k, distance 1 − x_i·e_k); the distance returned adds |x_i|²
back (the expanded form |x|² − 2 x·e + |e|²). Accumulation is fp32 (fp64 for fp64 inputs on
the torch path); ties go to the lowest code index.

The torch reference (the oracle, and the CPU path) works in tiles of rows × codes so that it
never holds more than ``block_bytes`` of distances at once (cache-sized on the CPU); the
Triton path never writes any.

Each search is one registered op (``lgvq::search_torch``, ``lgvq::search_triton``) with a fake
(shape-only) implementation, so torch.compile and CUDA graphs see a single opaque call with
known outputs instead of the torch path's loop over tiles or a kernel launch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgvq.checks import check_choice, check_finite_if_strict, check_same_device, check_tensor
from lgvq.ops.backend import resolve_backend
from lgvq.ops.cpu import run_blocks

METRICS = ("l2", "cos")
#: Largest block of distances the torch path materialises at once (the default off the CPU).
DEFAULT_BLOCK_BYTES = 64 * 2**20
#: On the CPU the torch path works in cache-sized tiles of at most ``CPU_CODE_BLOCK`` codes and
#: ``CPU_TILE_BYTES`` of distances, each worker thread writing into its one reused buffer: a
#: tile is still in cache when its row minimum is taken, and no fresh (page-faulting) block is
#: allocated per step.
CPU_TILE_BYTES = 4 * 2**20
CPU_CODE_BLOCK = 4096
#: On the CPU a tile's row argmin is taken in two steps: the minimum of each run of
#: ``CPU_ARGMIN_CHUNK`` codes (a vectorised ``amin``), then the argmin over those minima and
#: within the winning run. torch's CPU ``min(dim)``/``argmin`` are not vectorised and cost
#: about as much as the GEMM itself at d = 64; this cuts them to a few percent.
CPU_ARGMIN_CHUNK = 128


def check_codebook_inputs(
    x_name: str, x, codebook, metric: str, *, metrics=METRICS, codebook_name: str = "codebook",
    codebook_ndim: int = 2,
) -> None:
    """Shared validation of (x (..., d), codebook (K, d) — or (L, K, d) stage codebooks — and
    metric) for the ops that score rows against codes."""
    check_tensor(x_name, x, min_ndim=1, finite=False)
    check_tensor(codebook_name, codebook, ndim=codebook_ndim, finite=False)
    check_choice("metric", metric, metrics)
    if x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"{x_name} has code dimension {x.shape[-1]} (its last axis) but {codebook_name} has "
            f"{codebook.shape[-1]} (shape {tuple(codebook.shape)})"
        )
    check_same_device(**{x_name: x, codebook_name: codebook})
    check_finite_if_strict(x_name, x)
    check_finite_if_strict(codebook_name, codebook)


def check_code_sq_norms(code_sq_norms, codebook, metric: str) -> None:
    if code_sq_norms is None:
        return
    if metric != "l2":
        raise ValueError("code_sq_norms applies to metric='l2' only (cosine codes have unit norm)")
    check_tensor("code_sq_norms", code_sq_norms, ndim=1, finite=False)
    check_finite_if_strict("code_sq_norms", code_sq_norms)
    if code_sq_norms.shape[0] != codebook.shape[0]:
        raise ValueError(
            f"code_sq_norms must have one entry per code ({codebook.shape[0]}), got {code_sq_norms.shape[0]}"
        )


def normalize_for_metric(x: torch.Tensor, codebook: torch.Tensor, metric: str):
    """Cosine codes compare unit vectors; L2 uses the inputs as they are."""
    if metric == "cos":
        return F.normalize(x, dim=-1), F.normalize(codebook, dim=-1)
    return x, codebook


def _accumulate_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def score_offsets(codebook: torch.Tensor, metric: str, code_sq_norms: torch.Tensor | None) -> torch.Tensor:
    """Per-code term of the score ``offset_k - 2 x·e_k``: |e_k|^2 for L2, 0 for unit vectors."""
    dtype = _accumulate_dtype(codebook)
    if metric == "cos":
        return torch.zeros(codebook.shape[0], device=codebook.device, dtype=dtype)
    if code_sq_norms is not None:
        return code_sq_norms.to(dtype)
    return codebook.to(dtype).pow(2).sum(dim=1)


def _row_min(tile: torch.Tensor, out_scores: torch.Tensor, out_idx: torch.Tensor, chunk: int) -> None:
    """(min, first argmin) of each row of ``tile`` (rows, codes) into the given outputs.

    With ``chunk`` > 1 dividing the row length, the argmin runs over per-chunk minima and
    then inside the winning chunk only. The first chunk holding the row minimum holds its
    first occurrence, so ties still go to the lowest index.
    """
    rows, codes = tile.shape
    if chunk <= 1 or codes % chunk or codes <= chunk:
        torch.min(tile, dim=1, out=(out_scores, out_idx))
        return
    runs = tile.view(rows, codes // chunk, chunk)
    torch.min(runs.amin(dim=2), dim=1, out=(out_scores, out_idx))
    winner = runs[torch.arange(rows, device=tile.device), out_idx]  # (rows, chunk): 2x faster than gather
    torch.add(winner.argmin(dim=1), out_idx, alpha=chunk, out=out_idx)


def search_torch(
    x: torch.Tensor, codebook: torch.Tensor, offsets: torch.Tensor, block_bytes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference search over x (N, d): (min score, argmin) with score = offset - 2 x·e.

    Works tile by tile (rows × codes), never holding more than ``block_bytes`` of scores per
    tile (default: ``CPU_TILE_BYTES`` on the CPU, ``DEFAULT_BLOCK_BYTES`` elsewhere, where a
    tile spans the whole codebook). On the CPU each block of rows is one unit of
    ``lgvq.ops.cpu.run_blocks``: single-threaded workers pull row blocks, so a busy machine
    slows the search down no more than it takes cores away. Ties go to the lowest index
    (first code tile, then first code in it).
    """
    dtype = _accumulate_dtype(x, codebook)
    on_cpu = x.device.type == "cpu"
    n = x.shape[0]
    scores = torch.empty(n, device=x.device, dtype=dtype)
    indices = torch.empty(n, device=x.device, dtype=torch.int64)
    with torch.no_grad():
        x, codes_t, offsets = x.to(dtype), codebook.to(dtype).t(), offsets.to(dtype)
        shape = TileSearch.shape(n, codebook.shape[0], dtype, on_cpu, block_bytes)

        def work(blocks) -> None:
            searcher = TileSearch(*shape, codebook.shape[0], x.device, dtype, on_cpu)
            for b in blocks:
                rows = slice(b * shape[0], (b + 1) * shape[0])
                searcher(x[rows], codes_t, offsets, scores[rows], indices[rows])

        count = -(-n // shape[0])
        if on_cpu:
            run_blocks(work, count)
        else:
            work(iter(range(count)))
    return scores, indices


class TileSearch:
    """One worker's search of row blocks in tiles of (rows × codes), into buffers it reuses.

    ``__call__`` fills (min score, argmin) of the rows of a block, ``rows`` at a time, from
    one reused tile buffer per run of codes: each tile's row minimum goes into a small
    (code tiles, rows) buffer, then the minimum over tiles is taken (the first, lowest tile on
    ties). Callers that search many blocks (the residual stages) keep one per worker, so no
    block allocates.
    """

    def __init__(self, rows: int, codes_per_tile: int, num_codes: int, device, dtype, on_cpu: bool):
        self.rows, self.step = rows, codes_per_tile
        self.chunk = CPU_ARGMIN_CHUNK if on_cpu else 1
        self.code_starts = range(0, num_codes, codes_per_tile)
        self.tile = torch.empty(rows * codes_per_tile, device=device, dtype=dtype)
        self.part_scores = torch.empty(len(self.code_starts), rows, device=device, dtype=dtype)
        self.part_idx = torch.empty(len(self.code_starts), rows, device=device, dtype=torch.int64)
        self.tile_base = torch.arange(0, num_codes, codes_per_tile, device=device).unsqueeze(1)

    @staticmethod
    def shape(n: int, k: int, dtype: torch.dtype, on_cpu: bool, block_bytes: int | None = None) -> tuple[int, int]:
        """(rows, codes) of a tile holding at most ``block_bytes`` of scores (default:
        ``CPU_TILE_BYTES`` on the CPU, ``DEFAULT_BLOCK_BYTES`` elsewhere, where a tile spans
        the whole codebook)."""
        if block_bytes is None:
            block_bytes = CPU_TILE_BYTES if on_cpu else DEFAULT_BLOCK_BYTES
        max_scores = max(1, block_bytes // (torch.finfo(dtype).bits // 8))
        codes_per_tile = min(k, max_scores, CPU_CODE_BLOCK if on_cpu else k)
        return min(n, max(1, max_scores // codes_per_tile)), codes_per_tile

    def __call__(self, xb, codes_t, offsets, scores, indices) -> None:
        for r0 in range(0, xb.shape[0], self.rows):
            rows = slice(r0, r0 + self.rows)
            self._search_tile_rows(xb[rows], codes_t, offsets, scores[rows], indices[rows])

    def _search_tile_rows(self, xb, codes_t, offsets, scores, indices) -> None:
        rows, k = xb.shape[0], codes_t.shape[1]
        if len(self.code_starts) == 1:
            tile = self.tile[: rows * k].view(rows, k)
            torch.addmm(offsets, xb, codes_t, alpha=-2.0, out=tile)
            _row_min(tile, scores, indices, self.chunk)
            return
        part_scores, part_idx = self.part_scores[:, :rows], self.part_idx[:, :rows]
        for j, c0 in enumerate(self.code_starts):
            codes = min(self.step, k - c0)
            tile = self.tile[: rows * codes].view(rows, codes)
            torch.addmm(offsets[c0 : c0 + codes], xb, codes_t[:, c0 : c0 + codes], alpha=-2.0, out=tile)
            _row_min(tile, part_scores[j], part_idx[j], self.chunk)
        best = part_scores.argmin(dim=0, keepdim=True)  # first minimum: lowest tile
        scores.copy_(part_scores.gather(0, best)[0])
        indices.copy_((part_idx + self.tile_base).gather(0, best)[0])


@torch.library.custom_op("lgvq::search_torch", mutates_args=())
def search_torch_op(x: torch.Tensor, codebook: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``search_torch`` as one op: its loop over tiles stays out of compiled graphs."""
    return search_torch(x, codebook, offsets)


@search_torch_op.register_fake
def _search_torch_fake(x, codebook, offsets):
    n = x.shape[0]
    return x.new_empty(n, dtype=_accumulate_dtype(x, codebook)), x.new_empty(n, dtype=torch.int64)


@torch.library.custom_op("lgvq::search_triton", mutates_args=())
def search_triton_op(
    x: torch.Tensor, codebook: torch.Tensor, offsets: torch.Tensor, num_splits: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton search launcher as one op (see ``lgvq.ops.backend`` for why not ``triton_op``)."""
    from lgvq.kernels.nearest import nearest_code_search

    return nearest_code_search(x, codebook, offsets, num_splits)


@search_triton_op.register_fake
def _search_triton_fake(x, codebook, offsets, num_splits):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.float32), x.new_empty(n, dtype=torch.int64)


def search(x: torch.Tensor, codebook: torch.Tensor, offsets: torch.Tensor, backend: str, num_splits=None):
    """Dispatch the search of flat x (N, d) to the resolved backend ('triton' or 'torch').

    The search is not differentiable (an argmin): inputs are detached.
    """
    x, codebook, offsets = x.detach(), codebook.detach(), offsets.detach()
    if backend == "torch":
        return search_torch_op(x, codebook, offsets)
    if torch.float64 in (x.dtype, codebook.dtype):
        raise TypeError("float64 inputs are supported by backend='torch' only")
    dtype = torch.promote_types(x.dtype, codebook.dtype)  # tl.dot wants one operand dtype
    return search_triton_op(
        x.to(dtype).contiguous(), codebook.to(dtype).contiguous(), offsets.float().contiguous(), num_splits
    )


def score_to_distance(score: torch.Tensor, x: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared L2 (|x|^2 + score) or cosine distance (1 - x·e = 1 + score/2), in fp32."""
    if metric == "cos":
        dist = 1.0 + 0.5 * score
    else:
        dist = x.to(score.dtype).pow(2).sum(dim=1) + score
    return dist.clamp_min(0.0).float()


@torch.no_grad()
def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    *,
    backend: str = "auto",
    code_sq_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and distance of the nearest codebook entry for every vector of ``x``.

    Args:
        x: (..., d) vectors, fp32/fp16/bf16 (fp64 on the torch backend).
        codebook: (K, d) codes.
        metric: ``"l2"`` (squared Euclidean) or ``"cos"`` (1 - cosine similarity).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"``.
        code_sq_norms: optional precomputed |e_k|^2 (K,) for ``"l2"``, e.g. cached across calls.

    Returns:
        idx: int64 of shape ``x.shape[:-1]``; dist: fp32 of the same shape.
    """
    check_codebook_inputs("x", x, codebook, metric)
    check_code_sq_norms(code_sq_norms, codebook, metric)
    backend = resolve_backend(backend, x, codebook)
    flat, codes = normalize_for_metric(x.reshape(-1, x.shape[-1]), codebook, metric)
    score, idx = search(flat, codes, score_offsets(codes, metric, code_sq_norms), backend)
    dist = score_to_distance(score, flat, metric)
    return idx.view(x.shape[:-1]), dist.view(x.shape[:-1])
