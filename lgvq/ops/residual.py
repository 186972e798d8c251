"""Residual vector quantization, all stages in one op: ``residual_quantize(x, codebooks)``.

Math. With r_0 = x and L codebooks C_l (K, d), stage l searches its input
x_l = T(r_l) (T = identity for ``"l2"``, x / |x| for ``"cos"``, whose codes are unit vectors),
takes q_l = C_l[i_l] with i_l = argmin_k |x_l - C_l[k]|^2 and leaves r_{l+1} = r_l - q_l.
The op returns

* ``quantized`` = Σ_l q_l (the value), whose gradient to x is Σ_l J_T(r_l)^T S_l(g): every stage
  passes the incoming gradient g straight through to its own input (``S_l(g) = g``; with
  ``rotation_trick`` the rotation of arXiv 2410.06424 §4.2, see ``rotation_vjp``), and the
  residual chain r_{l+1} = r_l - sg(q_l) carries it back to x. For ``"l2"`` with straight-through
  that is L·g. This is vector-quantize-pytorch's ``ResidualVQ`` in training mode
  (``quant_grad_frac = 0``): each ``VectorQuantize`` layer returns ``straight_through(x_l, q_l)``
  (or ``rotate_to(x_l, q_l)``) and the next residual subtracts it detached.
* ``indices`` (..., L): i_l, ties to the lowest code index.
* ``losses`` (L,): loss_l = mean over rows and dimensions of (x_l - q_l)^2, differentiable in x
  (through r_l, as above) and in the codebooks (through q_l): vqp's per-stage commitment loss
  before ``commitment_weight`` (with a learnable codebook vqp does not detach q_l either; with
  EMA codebooks the codebooks simply do not require grad).

With a ``mask`` (True = a real row, False = padding; vqp's ``ResidualVQ(mask=...)``) a padded
row is still searched (its indices are returned, for the caller to replace) but its ``quantized``
is 0, it adds nothing to the losses, whose mean runs over the kept rows only
(loss_l = Σ_kept |x_l - q_l|² / max(1, kept·d)), and it receives no gradient nor gives any to the
codebooks. In vqp a padded row's residual stays x; that changes only its own (discarded) indices.

Every stage searches the codebooks as they were passed in. In vqp that holds when no codebook
changes between the stages of one forward: separate codebooks (stage l's EMA update and
dead-code expiry touch only codebook l, after its search) and a shared codebook with EMA (vqp
accumulates the statistics per stage and updates the shared codebook once, at the end). It
does not hold for a shared codebook with dead-code expiry (vqp replaces dead codes of the
shared codebook after every stage) nor for k-means initialisation (vqp initialises codebook l
from stage l's residual on the first call): the caller runs those steps stage by stage.
EMA statistics: ``residual_code_statistics`` (counts and sums of every stage's input x_l per
code, from the indices); ``stage_inputs`` gives x_l itself (e.g. to sample dead-code
replacements).

Tiling. The forward holds one residual (N, d) and runs every stage's search in bounded tiles
(``lgvq.ops.nearest.search_torch``, or the fused Triton kernel ``lgvq.kernels.residual`` that
keeps each row block's residual on chip for all L stages); no N×K tensor and no (N, K)
one-hot. The backward saves only x, the codebooks and the indices (N, L), and recomputes
r_l stage by stage (``_walk_stages``), O(L·N·d) work against the forward's O(L·N·K·d).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lgvq.checks import check_choice, check_tensor
from lgvq.ops.backend import resolve_backend
from lgvq.ops.cpu import run_blocks
from lgvq.ops.nearest import METRICS, TileSearch, _accumulate_dtype, check_codebook_inputs
from lgvq.ops.stats import code_counts_and_sums

#: vqp's ``safe_div`` floor for the norms in the rotation trick.
ROTATION_EPS = 1e-6
#: Rows per block of the CPU path: a block's residual (1 MiB at d = 128) stays in cache while
#: it runs all L stages (its search in ``TileSearch``'s cache-sized tiles). Each of a stage's
#: small ops holds the GIL for its Python overhead; at 512 rows those overheads serialised
#: the two workers of the statistics and the backward (2 threads no faster than 1), at 2,048
#: they take 35 and 47 ms instead of 68 and 67 (N = 16,384, L = 8, d = 128), and N = 16,384
#: still gives 8 blocks to balance over the workers.
ROW_BLOCK = 2048


# ----------------------------------------------------------------------------- inputs


def stage_codebooks(codebooks: torch.Tensor, num_stages: int | None) -> torch.Tensor:
    """(L, K, d) per-stage codebooks; a shared (K, d) codebook is expanded (no copy) to L stages."""
    check_tensor("codebooks", codebooks, finite=False)
    if codebooks.dim() == 2:
        if num_stages is None or num_stages < 1:
            raise ValueError(f"a shared (K, d) codebook needs num_stages >= 1, got {num_stages!r}")
        return codebooks.unsqueeze(0).expand(num_stages, *codebooks.shape)
    if codebooks.dim() != 3:
        raise ValueError(f"codebooks must be (L, K, d) or a shared (K, d), got shape {tuple(codebooks.shape)}")
    if num_stages is not None and num_stages != codebooks.shape[0]:
        raise ValueError(f"num_stages={num_stages} but codebooks has {codebooks.shape[0]} stages (shape (L, K, d))")
    return codebooks


def _stage_offsets(codes: torch.Tensor, cos: bool) -> torch.Tensor:
    """(L, K) per-code score terms |e|^2 (zeros for unit codes), in the accumulation dtype;
    once for a shared codebook (stage stride 0)."""
    dtype = _accumulate_dtype(codes)
    if cos:
        return codes.new_zeros(codes.shape[:2], dtype=dtype)
    if codes.stride(0) == 0:
        return codes[0].detach().to(dtype).pow(2).sum(dim=-1).expand(codes.shape[:2])
    return codes.detach().to(dtype).pow(2).sum(dim=-1)


def _stage_input(r: torch.Tensor, cos: bool) -> torch.Tensor:
    return F.normalize(r, dim=-1) if cos else r


# ----------------------------------------------------------------------------- torch forward


def residual_search_staged(x, codes, offsets, cos: bool, stage_searcher):
    """Forward over flat x (N, d), one stage at a time: the torch reference (the tiled
    ``TileSearch``), and the Triton path for rows too wide for the fused kernel (the nearest
    kernel per stage). On the CPU each block of rows runs all L stages on one single-threaded
    worker (``for_row_blocks``), its residual staying in cache. ``stage_searcher()`` makes one
    worker's ``search(x_l, stage) -> indices``.

    Returns (x - r_L in x's dtype, indices (N, L) int64, per-row squared errors (N, L) in the
    accumulation dtype).
    """
    n, num_stages = x.shape[0], codes.shape[0]
    acc = _accumulate_dtype(x, codes)
    quantized = torch.empty((n, x.shape[1]), device=x.device, dtype=x.dtype)
    indices = x.new_empty((n, num_stages), dtype=torch.int64)
    sqerr = x.new_empty((n, num_stages), dtype=acc)

    def block(rows: slice, search) -> None:
        x_rows = x[rows].to(acc)
        residual = x_rows.clone()
        for stage in range(num_stages):
            x_l = _stage_input(residual, cos)
            idx = search(x_l, stage)
            q = _gather_codes(codes, stage, idx, acc)
            sqerr[rows, stage] = (x_l - q).pow_(2).sum(dim=1)
            residual -= q
            indices[rows, stage] = idx
        quantized[rows] = x_rows - residual

    for_row_blocks(n, x.device, block, stage_searcher)
    return quantized, indices, sqerr


def _gather_codes(codes: torch.Tensor, stage: int, idx: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Stage ``stage``'s codes at ``idx`` (rows, d) in ``acc``: ``index_select`` copies whole rows
    (on the CPU 5x faster than advanced indexing), then only the chosen rows are converted."""
    return codes[stage].index_select(0, idx).to(acc)


def for_row_blocks(n: int, device: torch.device, block, scratch=None) -> list:
    """Call ``block(rows, scratch)`` for every block of ``ROW_BLOCK`` rows (one block of all
    rows off the CPU). On the CPU the blocks go to ``run_blocks``' single-threaded workers: no
    OpenMP region per small op, which on a loaded machine waits for a descheduled thread at
    every op (a (16384, 128) gather took 28 ms on 2 threads at load ~20, 0.7 ms on one).
    Blocks run without autograd: the op's gradients are explicit, and grad mode is per thread,
    so a worker would otherwise record every block's intermediates of an x that requires grad
    (the (N, d) outputs written block by block then held them all: 170 MiB at N = 16,384, L = 8).
    ``scratch()`` makes one worker's state (accumulators, search buffers); the list of them is
    returned."""
    size = _row_block(n, device)
    partials, lock = [], threading.Lock()

    def work(blocks) -> None:
        own = scratch() if scratch is not None else None
        with torch.no_grad():
            for b in blocks:
                block(slice(b * size, min(n, (b + 1) * size)), own)
        with lock:
            partials.append(own)

    count = -(-n // size)
    if device.type == "cpu":
        run_blocks(work, count)
    else:
        work(iter(range(count)))
    return partials


def _row_block(n: int, device: torch.device) -> int:
    return ROW_BLOCK if device.type == "cpu" else max(n, 1)


def _torch_stage_searcher(x, codes, offsets):
    """Per worker: a ``TileSearch`` and its (scores, indices) buffers for one block of rows,
    reused by every block and stage the worker runs (no allocation per stage)."""
    acc = _accumulate_dtype(x, codes)
    on_cpu = x.device.type == "cpu"
    codes_t, offsets = codes.to(acc).transpose(1, 2), offsets.to(acc)
    rows = min(x.shape[0], _row_block(x.shape[0], x.device))
    shape = TileSearch.shape(rows, codes.shape[1], acc, on_cpu)

    def make():
        searcher = TileSearch(*shape, codes.shape[1], x.device, acc, on_cpu)
        scores = x.new_empty(rows, dtype=acc)
        indices = x.new_empty(rows, dtype=torch.int64)

        def search(x_l, stage):
            n = x_l.shape[0]
            searcher(x_l, codes_t[stage], offsets[stage], scores[:n], indices[:n])
            return indices[:n]

        return search

    return make


def _triton_stage_searcher(x, codes, offsets):
    from lgvq.kernels.nearest import nearest_code_search

    def search(x_l, stage):
        return nearest_code_search(x_l.to(codes.dtype), codes[stage], offsets[stage].float())[1]

    return lambda: search


def residual_search(x, codes, offsets, cos: bool, backend: str):
    """The forward of the resolved backend: the fused kernel where the rows fit on chip."""
    if backend == "torch":
        return residual_search_staged(x, codes, offsets, cos, _torch_stage_searcher(x, codes, offsets))
    from lgvq.kernels import residual as kernel

    if kernel.fits_on_chip(x.shape[1], codes.dtype, x.device):
        return kernel.residual_search(x, codes, offsets, cos)
    return residual_search_staged(x, codes, offsets, cos, _triton_stage_searcher(x, codes, offsets))


# ----------------------------------------------------------------------------- backward


def _walk_stages(x: torch.Tensor, codes: torch.Tensor, indices: torch.Tensor, cos: bool) -> Iterator:
    """Replay the stages from the indices: yields (stage, r_l, x_l, q_l) in the accumulation dtype."""
    acc = _accumulate_dtype(x, codes)
    residual = x.to(acc, copy=True)
    for stage in range(codes.shape[0]):
        q = _gather_codes(codes, stage, indices[:, stage], acc)
        yield stage, residual, _stage_input(residual, cos), q
        residual = residual - q


def normalize_vjp(r: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient to r of ``F.normalize(r)`` given the gradient of its output:
    (g - y (y·g)) / |r| with y = r / |r|, or g / eps where F.normalize clamps |r| to eps."""
    norm = r.norm(dim=1, keepdim=True)
    clamped = norm.clamp_min(1e-12)
    y = r / clamped
    radial = torch.where(norm > 1e-12, (y * grad).sum(dim=1, keepdim=True), 0.0)
    return (grad - y * radial) / clamped


def rotation_vjp(x_l: torch.Tensor, q: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient to x_l of vqp's ``rotate_to(x_l, q)``: with u = x_l/|x_l|, v = q/|q|,
    w = (u + v)/|u + v| and s = |q|/|x_l| (all held constant), the output is
    s·(x_l - 2 (x_l·w) w + 2 (x_l·u) v), whose transpose applied to g is
    s·(g - 2 (g·w) w + 2 (g·v) u). Norms are floored at ``ROTATION_EPS`` as vqp's ``safe_div``."""
    x_norm = x_l.norm(dim=1, keepdim=True).clamp_min(ROTATION_EPS)
    q_norm = q.norm(dim=1, keepdim=True).clamp_min(ROTATION_EPS)
    u, v = x_l / x_norm, q / q_norm
    w = F.normalize(u + v, dim=1, eps=ROTATION_EPS)
    dot = lambda a, b: (a * b).sum(dim=1, keepdim=True)  # noqa: E731
    return (q_norm / x_norm) * (grad - 2 * dot(grad, w) * w + 2 * dot(grad, v) * u)


def loss_denominator(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | float:
    """What a stage's summed squared error is divided by: N·d, or max(1, kept rows · d)."""
    if mask is None:
        return float(x.numel())
    return (mask.sum() * x.shape[1]).clamp_min(1)


def residual_backward_torch(x, codes, indices, mask, grad_quantized, grad_losses, cos: bool, rotation: bool,
                            code_grad: bool):
    """(grad_x, grad_codes) of the op, stage by stage on blocks of rows (see the module docstring).

    Stage l's input gets S_l(g) from ``quantized`` plus 2·grad_loss_l·(x_l - q_l)/D from its
    loss (D = ``loss_denominator``); codebook l gets -2·grad_loss_l·(x_l - q_l)/D at the chosen
    codes (summed over the workers' own buffers). Padded rows (``mask`` False) take and give none.
    """
    n, d = x.shape
    acc = _accumulate_dtype(x, codes)
    loss_scale = grad_losses.to(acc) * 2.0 / loss_denominator(x, mask)
    grad_x = torch.empty((n, d), device=x.device, dtype=x.dtype)

    def block(rows: slice, grad_codes) -> None:
        grad_q = grad_quantized[rows].to(acc)
        kept = None if mask is None else mask[rows, None].to(acc)
        if kept is not None:
            grad_q = grad_q * kept
        grad_rows = torch.zeros_like(grad_q)
        for stage, r, x_l, q in _walk_stages(x[rows], codes, indices[rows], cos):
            err = (x_l - q) * loss_scale[stage]
            if kept is not None:
                err *= kept
            through = rotation_vjp(x_l, q, grad_q) if rotation else grad_q
            grad_rows += normalize_vjp(r, through + err) if cos else through + err
            if code_grad:
                grad_codes[stage].index_add_(0, indices[rows, stage], err, alpha=-1.0)
        grad_x[rows] = grad_rows

    def code_buffer():
        return torch.zeros(codes.shape, device=x.device, dtype=acc) if code_grad else None

    partials = for_row_blocks(n, x.device, block, code_buffer)
    if not code_grad:
        return grad_x, x.new_empty(0)
    return grad_x, torch.stack(partials).sum(dim=0).to(codes.dtype)


@torch.library.custom_op("lgvq::residual_backward", mutates_args=())
def residual_backward_op(
    x: torch.Tensor, codes: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None,
    grad_quantized: torch.Tensor, grad_losses: torch.Tensor, cos: bool, rotation: bool, code_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of both forward ops; grad_codes is empty (0,) unless ``code_grad``."""
    return residual_backward_torch(x, codes, indices, mask, grad_quantized, grad_losses, cos, rotation, code_grad)


@residual_backward_op.register_fake
def _residual_backward_fake(x, codes, indices, mask, grad_quantized, grad_losses, cos, rotation, code_grad):
    grad_codes = codes.new_empty(codes.shape) if code_grad else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), grad_codes


# ----------------------------------------------------------------------------- autograd


@torch.library.custom_op("lgvq::residual_quantize", mutates_args=())
def residual_quantize_op(
    x: torch.Tensor, codes: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor | None, cos: bool,
    rotation: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable op over flat x (N, d): (Σ q_l, indices (N, L), losses (L,) fp32).

    One registered op for both backends (the stage and tile loops, or the kernel launch, stay
    out of compiled graphs); ``residual_backward_op`` is its backward. Padded rows are zeroed
    after the search (the kernel searches every row)."""
    quantized, indices, sqerr = residual_search(x, codes, offsets, cos, backend)
    if mask is not None:
        quantized.masked_fill_(~mask[:, None], 0)
        sqerr.masked_fill_(~mask[:, None], 0)
    losses = sqerr.sum(dim=0) / loss_denominator(x, mask)
    return quantized, indices, losses.to(torch.promote_types(x.dtype, torch.float32))


@residual_quantize_op.register_fake
def _residual_quantize_fake(x, codes, offsets, mask, cos, rotation, backend):
    n, num_stages = x.shape[0], codes.shape[0]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((n, num_stages), dtype=torch.int64),
        x.new_empty(num_stages, dtype=torch.promote_types(x.dtype, torch.float32)),
    )


def _save_for_backward(ctx, inputs, output):
    x, codes, _offsets, mask, cos, rotation, _backend = inputs
    ctx.save_for_backward(x, codes, output[1], mask)
    ctx.cos, ctx.rotation = cos, rotation


def _backward(ctx, grad_quantized, _grad_indices, grad_losses):
    x, codes, indices, mask = ctx.saved_tensors
    code_grad = ctx.needs_input_grad[1]
    grad_x, grad_codes = residual_backward_op(
        x, codes, indices, mask, grad_quantized, grad_losses, ctx.cos, ctx.rotation, code_grad
    )
    return grad_x, (grad_codes if code_grad else None), None, None, None, None, None


residual_quantize_op.register_autograd(_backward, setup_context=_save_for_backward)


# ----------------------------------------------------------------------------- public API


def _prepare(x, codebooks, num_stages, metric):
    """(flat x, (L, K, d) codes, cos): cosine codes are normalised before a shared codebook is
    expanded, so that it stays one (K, d) buffer."""
    check_choice("metric", metric, METRICS)
    cos = metric == "cos"
    check_tensor("codebooks", codebooks, finite=False)
    codes = stage_codebooks(F.normalize(codebooks, dim=-1) if cos else codebooks, num_stages)
    check_codebook_inputs("x", x, codes, metric, codebook_name="codebooks", codebook_ndim=3)
    return x.reshape(-1, x.shape[-1]), codes, cos


def residual_quantize(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    num_stages: int | None = None,
    metric: str = "l2",
    rotation_trick: bool = False,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x (..., d) through L residual stages (the module docstring has the math).

    Args:
        x: (..., d) fp32/fp16/bf16 (fp64 on the torch backend).
        codebooks: (L, K, d), or one shared (K, d) codebook with ``num_stages`` = L.
        metric: ``"l2"`` or ``"cos"`` (every stage's residual and all codes L2-normalised).
        rotation_trick: gradient to each stage's input through vqp's rotation trick instead of
            the straight-through identity (the forward value is the same).
        mask: optional bool (...) of x's leading shape, False for padded rows: those quantize to
            0, count in no loss and get no gradient (their indices are still the search's).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"``.

    Returns:
        ``(quantized, indices, losses)``: quantized with x's shape and dtype (value Σ_l q_l),
        indices int64 of shape ``x.shape[:-1] + (L,)``, losses (L,) fp32 (fp64 for fp64 x):
        the per-stage mean squared error between the stage input and its code.
    """
    flat, codes, cos = _prepare(x, codebooks, num_stages, metric)
    backend = resolve_backend(backend, x, codes)
    if backend == "triton" and torch.float64 in (x.dtype, codes.dtype):
        raise TypeError("float64 inputs are supported by backend='torch' only")
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), finite=False)
        if mask.shape != x.shape[:-1]:
            raise ValueError(f"mask must have x's leading shape {tuple(x.shape[:-1])}, got {tuple(mask.shape)}")
        mask = mask.reshape(-1)
    offsets = _stage_offsets(codes, cos)
    if backend == "triton":  # one operand dtype for tl.dot
        dtype = torch.promote_types(x.dtype, codes.dtype)
        flat, codes = flat.to(dtype), codes.to(dtype)
    quantized, indices, losses = residual_quantize_op(flat, codes, offsets, mask, cos, rotation_trick, backend)
    return quantized.view(x.shape), indices.view(*x.shape[:-1], codes.shape[0]), losses


def _check_indices(indices: torch.Tensor, x: torch.Tensor, num_stages: int) -> None:
    check_tensor("indices", indices, dtypes=(torch.int64, torch.int32), finite=False)
    if indices.shape != (*x.shape[:-1], num_stages):
        raise ValueError(
            f"indices must have shape x.shape[:-1] + (L,) = {(*x.shape[:-1], num_stages)}, got {tuple(indices.shape)}"
        )


@torch.no_grad()
def stage_inputs(
    x: torch.Tensor, codebooks: torch.Tensor, indices: torch.Tensor, *, num_stages: int | None = None,
    metric: str = "l2",
) -> Iterator[torch.Tensor]:
    """Yield every stage's search input x_l (..., d) (fp32, fp64 for fp64 inputs), replayed from
    ``indices`` (..., L) as returned by ``residual_quantize``; one (N, d) buffer at a time."""
    flat, codes, cos = _prepare(x, codebooks, num_stages, metric)
    _check_indices(indices, x, codes.shape[0])
    for _, _, x_l, _ in _walk_stages(flat, codes, indices.reshape(-1, codes.shape[0]).long(), cos):
        yield x_l.view(x.shape)


@torch.no_grad()
def residual_code_statistics(
    x: torch.Tensor, codebooks: torch.Tensor, indices: torch.Tensor, *, num_stages: int | None = None,
    metric: str = "l2", backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per stage, the counts (L, K) and sums (L, K, d) of the stage inputs x_l assigned to each
    code (what an EMA codebook update needs), without an (N, K) one-hot."""
    flat, codes, cos = _prepare(x, codebooks, num_stages, metric)
    _check_indices(indices, x, codes.shape[0])
    flat_idx = indices.reshape(-1, codes.shape[0]).long()
    if resolve_backend(backend, x, codes) == "triton":
        stats = [
            code_counts_and_sums(x_l, idx, codes.shape[1], backend="triton")
            for x_l, idx in zip(stage_inputs(x, codebooks, indices, num_stages=num_stages, metric=metric),
                                indices.unbind(-1))
        ]
        counts, sums = zip(*stats)
        return torch.stack(counts), torch.stack(sums)
    return _code_statistics_torch(flat, codes, flat_idx, cos)


def _code_statistics_torch(x, codes, indices, cos: bool):
    """Counts and sums per stage on blocks of rows, each worker into its own (L, K) and
    (L, K, d) buffers (single-threaded ``index_add_``), summed at the end."""
    acc = _accumulate_dtype(x, codes)
    num_stages, num_codes, d = codes.shape

    def block(rows: slice, own) -> None:
        counts, sums = own
        for stage, _, x_l, _ in _walk_stages(x[rows], codes, indices[rows], cos):
            idx = indices[rows, stage]
            counts[stage].index_add_(0, idx, torch.ones_like(idx, dtype=acc))
            sums[stage].index_add_(0, idx, x_l)

    def buffers():
        return (torch.zeros((num_stages, num_codes), device=x.device, dtype=acc),
                torch.zeros((num_stages, num_codes, d), device=x.device, dtype=acc))

    partials = for_row_blocks(x.shape[0], x.device, block, buffers)
    return torch.stack([p[0] for p in partials]).sum(0), torch.stack([p[1] for p in partials]).sum(0)
