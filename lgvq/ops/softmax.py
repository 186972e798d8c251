"""Codebook softmax: a softmax over all K codes without the N×K matrix (IBQ, entropy losses, LFQ).

Math. For rows z_i (N, d) and codes e_k (K, d) the scaled logits are
``l_ik = a·z_i·e_k + b_k`` (dot: a = 1/τ, b = 0; cos: the same on unit vectors; l2:
a = 2/τ, b_k = -|e_k|²/τ, which is -|z_i - e_k|²/τ up to the row constant -|z_i|²/τ that no
softmax sees), ``p_ik = exp(l_ik - lse_i)``. Two ops are built on it:

- ``index_backprop_quantize`` (IBQ, Open-MAGVIT2): idx_i = argmax_k l_ik (lowest index on
  ties), value ``z_q = E[idx]``, gradient that of ``one_hot·E`` with
  ``one_hot = hard - sg(p) + p``: the hard path gives E[idx] its gradient, the soft path is
  the attention output ``s_i = Σ_k p_ik e_k`` (keys = values = the codebook), differentiated
  through p only: E's value gradient is ``one_hotᵀ·g`` = ``hardᵀ·g`` in value.
- the entropy sums: ``Σ_i H_i`` with ``H_i = -Σ_k p_ik log p_ik`` and ``P_k = Σ_i p_ik``, from
  which ``codebook_entropy`` forms MAGVIT-2's per-sample entropy (mean H_i) and codebook
  entropy ``-Σ_k p̄_k log(p̄_k + ε)``, p̄ = P / N, ε = 1e-5 (its only effective eps: the one
  MAGVIT-2 adds inside ``log_softmax`` shifts every logit alike and cancels). For LFQ the codes
  are the 2^b sign vectors ``c_k = 2·bits(k) - 1`` (bit j of k is coordinate j) and
  ``l_ik = (2/τ)·x_i·c_k``; they are generated from their index bits per tile.

Gradients. For any loss of the probabilities with ``w_ik = ∂L/∂p_ik``, the logits receive
``D_ik = p_ik (w_ik - c_i)`` with ``c_i = Σ_k p_ik w_ik`` (w is defined up to a row constant); then ``dz_i = a Σ_k D_ik e_k``,
``de_k = a Σ_i D_ik z_i`` and ``db_k = Σ_i D_ik``. IBQ's soft path has ``w_ik = g_i·e_k``
(g = ∂L/∂s); the entropy sums have
``w_ik = γ_k - η·log p_ik`` (γ = ∂L/∂P, η = ∂L/∂ΣH; log p rather than l keeps w, and the
cancellation in ``w - c``, small).

Tiling (torch path; the Triton path in ``lgvq.kernels.softmax`` has the same passes). Nothing
larger than a tile of rows × codes is ever held (``TILE_BYTES``, at most ``CODE_TILE`` codes):
- forward, row-owned: each row block streams the code tiles with an online softmax (running
  max m, Σ exp(l - m), Σ exp(l - m)(l - m) for the entropy, Σ exp(l - m) e for IBQ, argmax);
- forward, code-owned: the entropy's column sums P_k, each code block streaming row tiles with
  the rows' final lse;
- backward, row-owned: p recomputed per tile, ``dz_i = a (Σ_k p_ik w_ik e_k - c_i s_i)`` with
  c_i accumulated in the same loop (s_i: IBQ's saved output, or accumulated here);
- backward, code-owned (only when the codebook or b needs a gradient): D from the rows' c_i.
Row-owned and code-owned passes write disjoint outputs, so the CPU runs their blocks on
``lgvq.ops.cpu.run_blocks`` workers and the GPU kernels need no atomics. Each worker computes
its tiles in two tile buffers allocated once per pass (``_TileBuffers``): a fresh allocation per
tile on two threads left glibc holding gigabytes of freed heap (4.5 GB resident for a 256 MiB
N×K at N = 1,024, K = 2^16). Probabilities below ``tiny^0.75`` of the dtype (1.3e-29 in
fp32) are flushed to 0 (``_exp_``), an absolute error of at most that per probability: at
τ = 0.01 most of them underflow, and subnormal numbers take the CPU's slow path, in ``exp``
(about 20× a normal one) and in the GEMMs that multiply them (the backward ran 15× slower).

Each path is a pair of registered ops (forward, backward) joined by ``register_autograd``,
with fake implementations, so ``torch.compile(fullgraph=True)`` sees one call per pass.

Distributed use: ``codebook_softmax_sums`` / ``lfq_softmax_sums`` return the additive sums
(ΣH, P); all-reduce them (and the row count) with a differentiable all-reduce, then call
``entropy_from_sums``: every rank gets the gradient of the global batch's entropies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lgvq.checks import check_finite_if_strict, check_positive, check_tensor
from lgvq.ops.backend import resolve_backend
from lgvq.ops.cpu import run_blocks
from lgvq.ops.nearest import CPU_ARGMIN_CHUNK, _row_min, check_codebook_inputs

METRICS = ("dot", "cos", "l2")
#: MAGVIT-2's eps inside the codebook entropy's log.
ENTROPY_EPS = 1e-5
#: Largest tile of logits (bytes) and most codes per tile the torch path holds per worker.
TILE_BYTES = 4 * 2**20
CODE_TILE = 2048
#: LFQ codebooks of up to 2^MAX_LFQ_BITS codes (the index must fit an int64 with room).
MAX_LFQ_BITS = 30


def _acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def lfq_codes(start: int, stop: int, bits: int, device, dtype) -> torch.Tensor:
    """Codes ``start..stop-1`` of LFQ's implicit codebook: coordinate j of code k is
    ``2·((k >> j) & 1) - 1`` (Open-MAGVIT2's bit order, least significant bit first)."""
    k = torch.arange(start, stop, device=device).unsqueeze(1)
    shifts = torch.arange(bits, device=device)
    return ((k >> shifts) & 1).to(dtype) * 2 - 1


class _Logits:
    """Tiles of ``l = scale·z·eᵀ + bias`` over an explicit codebook, or LFQ's when it is None."""

    def __init__(self, z, codebook, bias, scale: float):
        dtype = _acc_dtype(z, codebook, bias)
        self.z = z.detach().to(dtype)  # the passes' gradients are explicit: no graph
        self.codebook = None if codebook is None else codebook.detach().to(dtype)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.scale = scale
        self.n, self.d = z.shape
        self.k = 2 ** self.d if codebook is None else codebook.shape[0]
        on_cpu = z.device.type == "cpu"
        per_tile = max(1, TILE_BYTES // (torch.finfo(dtype).bits // 8))
        self.code_tile = min(self.k, CODE_TILE, per_tile) if on_cpu else min(self.k, per_tile)
        self.row_tile = min(self.n, max(1, per_tile // self.code_tile))

    def codes(self, c0: int, c1: int) -> torch.Tensor:
        if self.codebook is None:
            return lfq_codes(c0, c1, self.d, self.z.device, self.z.dtype)
        return self.codebook[c0:c1]

    def tile(self, r0: int, r1: int, c0: int, c1: int, codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The logits of rows r0..r1 against codes c0..c1, written into ``out``."""
        z = self.z[r0:r1]
        if self.bias is None:
            return torch.mm(z, codes.t(), out=out).mul_(self.scale)
        return torch.addmm(self.bias[c0:c1], z, codes.t(), alpha=self.scale, out=out)

    def buffers(self) -> _TileBuffers:
        return _TileBuffers(self.row_tile * self.code_tile, self.z.dtype, self.z.device)

    def row_blocks(self):
        return -(-self.n // self.row_tile)

    def code_blocks(self):
        return -(-self.k // self.code_tile)

    def code_spans(self):
        return [(c0, min(c0 + self.code_tile, self.k)) for c0 in range(0, self.k, self.code_tile)]

    def row_spans(self):
        return [(r0, min(r0 + self.row_tile, self.n)) for r0 in range(0, self.n, self.row_tile)]


class _TileBuffers:
    """One worker's two tile buffers for a pass; ``view(i, rows, codes)`` is a (rows, codes) tile
    in buffer i (0: the logits and what is computed in place from them, 1: the probabilities)."""

    def __init__(self, size: int, dtype, device):
        self.flat = [torch.empty(size, dtype=dtype, device=device) for _ in range(2)]

    def view(self, i: int, rows: int, codes: int) -> torch.Tensor:
        return self.flat[i][: rows * codes].view(rows, codes)


def _exp_(shifted: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(shifted)`` into out with results below ``tiny^0.75`` of the dtype flushed to 0
    (shifted, ≤ 0 up to rounding, is clamped in place first): see the module docstring."""
    cut = torch.finfo(shifted.dtype).tiny ** 0.75
    torch.exp(shifted.clamp_min_(math.log(cut) - 1.0), out=out)
    return F.threshold_(out, cut, 0.0)


def _run(work, count: int, device) -> None:
    """``work`` over ``count`` blocks, without autograd: the passes' gradients are explicit, and a
    saved tensor that requires grad (lse in the backward) would otherwise make every tile a graph
    node (grad mode is per thread, so each worker sets it)."""

    def graphless(blocks):
        with torch.no_grad():
            work(blocks)

    if device.type == "cpu":
        run_blocks(graphless, count)
    else:
        graphless(iter(range(count)))


def _row_max(tile: torch.Tensor, chunk: int, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, first argmax) of each row, through nearest's chunked argmin on ``-tile`` written into
    scratch (torch's CPU ``max(dim)`` is not vectorised: it cost about as much as the tile's GEMM)."""
    rows = tile.shape[0]
    neg_max = torch.empty(rows, dtype=tile.dtype, device=tile.device)
    idx = torch.empty(rows, dtype=torch.int64, device=tile.device)
    _row_min(torch.neg(tile, out=scratch), neg_max, idx, chunk)
    return neg_max.neg_(), idx


def _forward_rows(lg: _Logits, *, attend: bool, entropy: bool):
    """Row-owned forward pass: (lse, argmax, attention output s or None, per-row entropy or None)."""
    dtype, device = lg.z.dtype, lg.z.device
    lse = torch.empty(lg.n, dtype=dtype, device=device)
    idx = torch.empty(lg.n, dtype=torch.int64, device=device)
    soft = torch.empty(lg.n, lg.d, dtype=dtype, device=device) if attend else None
    ent = torch.empty(lg.n, dtype=dtype, device=device) if entropy else None
    chunk = CPU_ARGMIN_CHUNK if device.type == "cpu" else 1

    def work(blocks):
        buffers = lg.buffers()
        for block in blocks:
            r0 = block * lg.row_tile
            r1 = min(r0 + lg.row_tile, lg.n)
            rows = r1 - r0
            m = torch.full((rows,), float("-inf"), dtype=dtype, device=device)
            total = torch.zeros(rows, dtype=dtype, device=device)  # Σ exp(l - m)
            spread = torch.zeros(rows, dtype=dtype, device=device)  # Σ exp(l - m)(l - m)
            acc = torch.zeros(rows, lg.d, dtype=dtype, device=device) if attend else None
            best_idx = torch.zeros(rows, dtype=torch.int64, device=device)
            for c0, c1 in lg.code_spans():
                codes = lg.codes(c0, c1)
                logits = lg.tile(r0, r1, c0, c1, codes, buffers.view(0, rows, c1 - c0))
                if attend:
                    tile_max, tile_arg = _row_max(logits, chunk, buffers.view(1, rows, c1 - c0))
                    better = tile_max > m  # strict: an earlier tile keeps a tie
                    best_idx = torch.where(better, tile_arg + c0, best_idx)
                else:
                    tile_max = logits.amax(dim=1)
                m_new = torch.maximum(m, tile_max)
                alpha = torch.exp(m - m_new)
                p = _exp_(logits.sub_(m_new.unsqueeze(1)), buffers.view(1, rows, c1 - c0))
                if entropy:
                    shift = torch.where(total > 0, (m - m_new) * total, 0.0)
                    spread = alpha * (spread + shift) + logits.mul_(p).sum(dim=1)
                total = alpha * total + p.sum(dim=1)
                if attend:
                    acc = torch.addmm(acc * alpha.unsqueeze(1), p, codes)
                m = m_new
            lse[r0:r1] = m + total.log()
            idx[r0:r1] = best_idx
            if attend:
                soft[r0:r1] = acc / total.unsqueeze(1)
            if entropy:
                ent[r0:r1] = total.log() - spread / total

    _run(work, lg.row_blocks(), device)
    return lse, idx, soft, ent


def _probability_sums(lg: _Logits, lse: torch.Tensor) -> torch.Tensor:
    """Code-owned forward pass: P_k = Σ_i exp(l_ik - lse_i)."""
    sums = torch.empty(lg.k, dtype=lg.z.dtype, device=lg.z.device)
    spans = lg.code_spans()

    def work(blocks):
        buffers = lg.buffers()
        for block in blocks:
            c0, c1 = spans[block]
            codes = lg.codes(c0, c1)
            acc = torch.zeros(c1 - c0, dtype=lg.z.dtype, device=lg.z.device)
            for r0, r1 in lg.row_spans():
                logits = lg.tile(r0, r1, c0, c1, codes, buffers.view(0, r1 - r0, c1 - c0))
                acc += _exp_(logits.sub_(lse[r0:r1].unsqueeze(1)), logits).sum(dim=0)
            sums[c0:c1] = acc

    _run(work, len(spans), lg.z.device)
    return sums


def _backward_rows(lg: _Logits, lse, probability_grad, soft=None):
    """Row-owned backward pass: (dz, c) with c_i = Σ_k p_ik w_ik and
    ``dz_i = a (Σ_k p_ik w_ik e_k - c_i s_i)``. ``probability_grad(r0, r1, c0, c1, logits, codes)``
    gives the tile of w from the tile of log p (it may overwrite log p); s is accumulated here
    unless given."""
    dtype, device = lg.z.dtype, lg.z.device
    dz = torch.empty(lg.n, lg.d, dtype=dtype, device=device)
    row_dot = torch.empty(lg.n, dtype=dtype, device=device)

    def work(blocks):
        buffers = lg.buffers()
        for block in blocks:
            r0 = block * lg.row_tile
            r1 = min(r0 + lg.row_tile, lg.n)
            weighted = torch.zeros(r1 - r0, lg.d, dtype=dtype, device=device)
            attended = soft[r0:r1] if soft is not None else torch.zeros_like(weighted)
            c = torch.zeros(r1 - r0, dtype=dtype, device=device)
            for c0, c1 in lg.code_spans():
                codes = lg.codes(c0, c1)
                log_p = lg.tile(r0, r1, c0, c1, codes, buffers.view(0, r1 - r0, c1 - c0))
                p = _exp_(log_p.sub_(lse[r0:r1].unsqueeze(1)), buffers.view(1, r1 - r0, c1 - c0))
                if soft is None:
                    attended.addmm_(p, codes)
                pw = p.mul_(probability_grad(r0, r1, c0, c1, log_p, codes))
                c += pw.sum(dim=1)
                weighted.addmm_(pw, codes)
            dz[r0:r1] = (weighted - c.unsqueeze(1) * attended) * lg.scale
            row_dot[r0:r1] = c

    _run(work, lg.row_blocks(), device)
    return dz, row_dot


def _backward_codes(lg: _Logits, lse, row_dot, probability_grad):
    """Code-owned backward pass: (de, db) with D_ik = p_ik (w_ik - c_i), de_k = a Σ_i D_ik z_i,
    db_k = Σ_i D_ik."""
    dtype, device = lg.z.dtype, lg.z.device
    de = torch.empty(lg.k, lg.d, dtype=dtype, device=device)
    db = torch.empty(lg.k, dtype=dtype, device=device)
    spans = lg.code_spans()

    def work(blocks):
        buffers = lg.buffers()
        for block in blocks:
            c0, c1 = spans[block]
            codes = lg.codes(c0, c1)
            acc = torch.zeros(c1 - c0, lg.d, dtype=dtype, device=device)
            bias_acc = torch.zeros(c1 - c0, dtype=dtype, device=device)
            for r0, r1 in lg.row_spans():
                log_p = lg.tile(r0, r1, c0, c1, codes, buffers.view(0, r1 - r0, c1 - c0))
                p = _exp_(log_p.sub_(lse[r0:r1].unsqueeze(1)), buffers.view(1, r1 - r0, c1 - c0))
                w = probability_grad(r0, r1, c0, c1, log_p, codes)
                grad_logits = p.mul_(w.sub_(row_dot[r0:r1].unsqueeze(1)))
                bias_acc += grad_logits.sum(dim=0)
                acc.addmm_(grad_logits.t(), lg.z[r0:r1], alpha=lg.scale)
            de[c0:c1] = acc
            db[c0:c1] = bias_acc

    _run(work, len(spans), device)
    return de, db


# ---------------------------------------------------------------- registered ops: IBQ soft path


@torch.library.custom_op("lgvq::softmax_attend", mutates_args=())
def softmax_attend(
    z: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None, scale: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, idx, lse) over flat z (N, d): s_i = Σ_k p_ik e_k, idx_i = argmax_k l_ik, lse_i.

    s is differentiated through the probabilities only (``softmax(l)·sg(E)``): in IBQ's
    ``one_hot·E`` the codebook's value gradient is ``one_hotᵀ·g``, whose value is ``hardᵀ·g``,
    and it comes from ``E[idx]``."""
    if backend == "triton":
        from lgvq.kernels.softmax import softmax_forward

        lse, idx, soft, _ = softmax_forward(z, codebook, bias, scale, attend=True, entropy=False)
        return soft, idx, lse
    lse, idx, soft, _ = _forward_rows(_Logits(z, codebook, bias, scale), attend=True, entropy=False)
    return soft, idx, lse


@softmax_attend.register_fake
def _softmax_attend_fake(z, codebook, bias, scale, backend):
    dtype = _acc_dtype(z, codebook, bias)
    n = z.shape[0]
    return z.new_empty(z.shape, dtype=dtype), z.new_empty(n, dtype=torch.int64), z.new_empty(n, dtype=dtype)


@torch.library.custom_op("lgvq::softmax_attend_backward", mutates_args=())
def softmax_attend_backward(
    z: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None, scale: float, soft: torch.Tensor,
    lse: torch.Tensor, grad_soft: torch.Tensor, code_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz, dcodebook, dbias); the last two are empty (0,) unless ``code_grad``."""
    if backend == "triton":
        from lgvq.kernels.softmax import softmax_backward

        dz, de, db = softmax_backward(z, codebook, bias, scale, lse, soft=soft, grad_soft=grad_soft,
                                      code_grad=code_grad)
    else:
        lg = _Logits(z, codebook, bias, scale)
        g = grad_soft.to(lg.z.dtype)

        def probability_grad(r0, r1, c0, c1, log_p, codes):  # w_ik = g_i·e_k, in log p's place
            return torch.mm(g[r0:r1], codes.t(), out=log_p)

        dz, row_dot = _backward_rows(lg, lse, probability_grad, soft=soft.to(lg.z.dtype))
        de, db = _backward_codes(lg, lse, row_dot, probability_grad) if code_grad else (None, None)
    return _backward_outputs(z, codebook, bias, dz, de, db, code_grad)


def _backward_outputs(z, codebook, bias, dz, de, db, code_grad: bool):
    """(dz, dcodebook, dbias) in the inputs' dtypes; an empty (0,) for an input without a gradient
    (a registered op returns tensors only)."""
    de = de.to(codebook.dtype) if code_grad and codebook is not None else z.new_empty(0)
    db = db.to(bias.dtype) if code_grad and bias is not None else z.new_empty(0)
    return dz.to(z.dtype), de, db


@softmax_attend_backward.register_fake
def _softmax_attend_backward_fake(z, codebook, bias, scale, soft, lse, grad_soft, code_grad, backend):
    return _backward_fakes(z, codebook, bias, code_grad)


def _backward_fakes(z, codebook, bias, code_grad):
    de = torch.empty_like(codebook) if code_grad and codebook is not None else z.new_empty(0)
    db = torch.empty_like(bias) if code_grad and bias is not None else z.new_empty(0)
    return torch.empty_like(z, memory_format=torch.contiguous_format), de, db


def _save_attend(ctx, inputs, output):
    z, codebook, bias, scale, backend = inputs
    soft, _idx, lse = output
    ctx.save_for_backward(z, codebook, bias, soft, lse)
    ctx.scale, ctx.backend = scale, backend


def _attend_backward(ctx, grad_soft, _grad_idx, _grad_lse):
    z, codebook, bias, soft, lse = ctx.saved_tensors
    code_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dz, de, db = softmax_attend_backward(
        z, codebook, bias, ctx.scale, soft, lse, grad_soft.contiguous(), code_grad, ctx.backend
    )
    return dz, de if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None, None, None


softmax_attend.register_autograd(_attend_backward, setup_context=_save_attend)


# ---------------------------------------------------------------- registered ops: entropy sums


@torch.library.custom_op("lgvq::softmax_entropy_sums", mutates_args=())
def softmax_entropy_sums(
    z: torch.Tensor, codebook: torch.Tensor | None, bias: torch.Tensor | None, scale: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ_i H_i, P (K,), lse (N,)) over flat z (N, d); codebook None is LFQ's {-1, 1}^d."""
    if backend == "triton":
        from lgvq.kernels.softmax import probability_sums, softmax_forward

        lse, _, _, ent = softmax_forward(z, codebook, bias, scale, attend=False, entropy=True)
        return ent.sum(), probability_sums(z, codebook, bias, scale, lse), lse
    lg = _Logits(z, codebook, bias, scale)
    lse, _, _, ent = _forward_rows(lg, attend=False, entropy=True)
    return ent.sum(), _probability_sums(lg, lse), lse


@softmax_entropy_sums.register_fake
def _softmax_entropy_sums_fake(z, codebook, bias, scale, backend):
    dtype = _acc_dtype(z, codebook, bias)
    k = 2 ** z.shape[1] if codebook is None else codebook.shape[0]
    return z.new_empty((), dtype=dtype), z.new_empty(k, dtype=dtype), z.new_empty(z.shape[0], dtype=dtype)


@torch.library.custom_op("lgvq::softmax_entropy_sums_backward", mutates_args=())
def softmax_entropy_sums_backward(
    z: torch.Tensor, codebook: torch.Tensor | None, bias: torch.Tensor | None, scale: float, lse: torch.Tensor,
    grad_entropy: torch.Tensor, grad_sums: torch.Tensor, code_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz, dcodebook, dbias); the last two are empty (0,) unless ``code_grad``."""
    if backend == "triton":
        from lgvq.kernels.softmax import softmax_backward

        dz, de, db = softmax_backward(z, codebook, bias, scale, lse, grad_entropy=grad_entropy,
                                      grad_sums=grad_sums, code_grad=code_grad)
    else:
        lg = _Logits(z, codebook, bias, scale)
        gamma, eta = grad_sums.to(lg.z.dtype), grad_entropy.to(lg.z.dtype)

        def probability_grad(r0, r1, c0, c1, log_p, codes):  # w_ik = γ_k - η log p_ik, in place
            return log_p.mul_(-eta).add_(gamma[c0:c1])

        dz, row_dot = _backward_rows(lg, lse, probability_grad)
        de, db = _backward_codes(lg, lse, row_dot, probability_grad) if code_grad else (None, None)
    return _backward_outputs(z, codebook, bias, dz, de, db, code_grad)


@softmax_entropy_sums_backward.register_fake
def _softmax_entropy_sums_backward_fake(z, codebook, bias, scale, lse, grad_entropy, grad_sums, code_grad, backend):
    return _backward_fakes(z, codebook, bias, code_grad)


def _save_entropy_sums(ctx, inputs, output):
    z, codebook, bias, scale, backend = inputs
    ctx.save_for_backward(z, codebook, bias, output[2])
    ctx.scale, ctx.backend = scale, backend


def _entropy_sums_backward(ctx, grad_entropy, grad_sums, _grad_lse):
    z, codebook, bias, lse = ctx.saved_tensors
    code_grad = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    dz, de, db = softmax_entropy_sums_backward(
        z, codebook, bias, ctx.scale, lse, grad_entropy, grad_sums.contiguous(), code_grad, ctx.backend
    )
    return dz, de if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None, None, None


softmax_entropy_sums.register_autograd(_entropy_sums_backward, setup_context=_save_entropy_sums)


# ---------------------------------------------------------------- public API


def _check_inputs(z, codebook, metric: str, temperature: float) -> None:
    check_codebook_inputs("z", z, codebook, metric, metrics=METRICS)
    check_positive("temperature", temperature)


def _logit_terms(z, codebook, metric: str, temperature: float):
    """(flat z, codes, bias or None, scale) with ``logits = scale·z·codesᵀ + bias``."""
    flat = z.reshape(-1, z.shape[-1])
    if metric == "cos":
        return F.normalize(flat, dim=-1), F.normalize(codebook, dim=-1), None, 1.0 / temperature
    if metric == "l2":
        return flat, codebook, codebook.pow(2).sum(dim=1) * (-1.0 / temperature), 2.0 / temperature
    return flat, codebook, None, 1.0 / temperature


def _resolve(requested: str, z, *others) -> str:
    """The backend for z (..., d): ``auto`` keeps rows wider than the kernels take on torch."""
    backend = resolve_backend(requested, z, *others)
    if backend != "triton":
        return backend
    if any(t.dtype == torch.float64 for t in (z, *others)):
        raise TypeError("float64 inputs are supported by backend='torch' only")
    from lgvq.kernels.softmax import max_d

    widest = max_d(torch.promote_types(z.dtype, others[0].dtype) if others else z.dtype)
    if z.shape[-1] > widest:
        if requested == "auto":
            return "torch"
        raise ValueError(f"backend='triton' takes {z.dtype} z with at most {widest} features (last axis), "
                         f"got {z.shape[-1]}")
    return backend


def index_backprop_quantize(
    z: torch.Tensor, codebook: torch.Tensor, *, metric: str = "dot", temperature: float = 1.0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """IBQ (Open-MAGVIT2's ``IndexPropagationQuantize``) without the N×K matrix.

    z (..., d), codebook (K, d). Logits ``l = z·eᵀ/τ`` (metric ``"dot"``), the same on unit
    vectors (``"cos"``: z and codebook L2-normalised first, differentiably) or ``-|z - e|²/τ``
    (``"l2"``). Returns ``(z_q, idx)``: idx int64 of shape ``z.shape[:-1]``, the argmax of the
    logits (lowest index on ties); z_q in z's dtype with value exactly ``codebook[idx]`` (the
    normalised codebook for ``"cos"``) and the gradient of ``(hard - sg(soft) + soft)·E`` with
    soft = softmax(l): the codebook gets ``hardᵀ·g`` plus the soft path's gradient, z the soft
    path's (see the module docstring).
    """
    _check_inputs(z, codebook, metric, temperature)
    backend = _resolve(backend, z, codebook)
    flat, codes, bias, scale = _logit_terms(z, codebook, metric, temperature)
    soft, idx, _ = softmax_attend(flat, codes, bias, scale, backend)
    soft = soft.to(z.dtype)
    z_q = codes[idx].to(z.dtype) + (soft - soft.detach())
    return z_q.view(z.shape), idx.view(z.shape[:-1])


def codebook_softmax_sums(
    z: torch.Tensor, codebook: torch.Tensor, *, metric: str = "dot", temperature: float = 0.01, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive pieces of the entropy loss: ``(Σ_i H_i, P)`` for the rows of z (..., d).

    p_i = softmax(l_i) with the logits of ``index_backprop_quantize`` at temperature τ;
    ``H_i = -Σ_k p_ik log p_ik`` (a scalar sum over rows) and ``P_k = Σ_i p_ik`` (K,), both in
    fp32 (fp64 for fp64 inputs), differentiable to z and the codebook. Sums add across row
    shards: all-reduce them (and the row count) before ``entropy_from_sums`` for the entropy
    of a global batch.
    """
    _check_inputs(z, codebook, metric, temperature)
    backend = _resolve(backend, z, codebook)
    flat, codes, bias, scale = _logit_terms(z, codebook, metric, temperature)
    entropy_sum, sums, _ = softmax_entropy_sums(flat, codes, bias, scale, backend)
    return entropy_sum, sums


def lfq_softmax_sums(
    x: torch.Tensor, *, temperature: float = 0.01, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``codebook_softmax_sums`` for LFQ's implicit codebook {-1, 1}^b, b = x.shape[-1].

    Logits ``l_ik = 2·x_i·c_k/τ`` as Open-MAGVIT2's LFQ builds them (c_k: coordinate j is
    ``2·((k >> j) & 1) - 1``); P has 2^b entries. The codes are generated per tile, never
    stored beyond one.
    """
    check_tensor("x", x, min_ndim=1, finite=False)
    check_positive("temperature", temperature)
    bits = x.shape[-1]
    if bits > MAX_LFQ_BITS:
        raise ValueError(f"x's last axis is the number of bits b (2^b codes); at most {MAX_LFQ_BITS}, got {bits}")
    check_finite_if_strict("x", x)
    backend = _resolve(backend, x)
    entropy_sum, sums, _ = softmax_entropy_sums(x.reshape(-1, bits), None, None, 2.0 / temperature, backend)
    return entropy_sum, sums


def entropy_from_sums(
    entropy_sum: torch.Tensor, probability_sums: torch.Tensor, count, eps: float = ENTROPY_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-2's ``(sample_entropy, avg_entropy)`` from the sums over ``count`` rows:
    ``ΣH / count`` and ``-Σ_k p̄_k log(p̄_k + eps)`` with ``p̄ = P / count``."""
    avg = probability_sums / count
    return entropy_sum / count, -(avg * torch.log(avg + eps)).sum()


def codebook_entropy(
    z: torch.Tensor, codebook: torch.Tensor, *, metric: str = "dot", temperature: float = 0.01, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAGVIT-2 / Open-MAGVIT2's ``compute_entropy_loss`` pieces for z (..., d) against the codebook:
    ``(sample_entropy, avg_entropy)`` (the loss is ``w_s·sample_entropy - w_b·avg_entropy``).
    Logits as in ``codebook_softmax_sums`` (``"l2"``: LlamaGen's -distance logits)."""
    entropy_sum, sums = codebook_softmax_sums(z, codebook, metric=metric, temperature=temperature, backend=backend)
    return entropy_from_sums(entropy_sum, sums, z.numel() // z.shape[-1])


def lfq_entropy(x: torch.Tensor, *, temperature: float = 0.01, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Open-MAGVIT2 LFQ's entropy pieces ``(per_sample_entropy, codebook_entropy)`` over all 2^b codes
    (b = x.shape[-1]; every leading index is one row, as in its ``entropy_loss``)."""
    entropy_sum, sums = lfq_softmax_sums(x, temperature=temperature, backend=backend)
    return entropy_from_sums(entropy_sum, sums, x.numel() // x.shape[-1])
