"""``VectorQuantizer``: a drop-in quantizer on the fused ops.

Two faces:

* taming-compatible — ``VectorQuantizer(n_e, e_dim, beta)``, codebook in
  ``embedding.weight``, ``forward(z)`` on (B, C, H, W) returning
  ``(z_q, loss, (perplexity, None, indices))`` and ``get_codebook_entry(indices, shape)``,
  so taming-based code (the LG-VQ release among it) swaps it in by changing one import;
* modern — ``quantize(z)`` on channels-last (..., d) returning a ``QuantizerOutput``.

Options: cosine codes, EMA codebook updates (decay, Laplace smoothing, no codebook
gradient), k-means initialisation from the first training batch, dead-code restarts from
the batch, running codebook usage and perplexity. Non-gradient state is synchronised over
ranks when a process group is initialised (``lgvq.quantize.distributed``).

A training step makes no device→host sync (after the k-means initialisation, a one-off): every
statistic stays on the device and every update is a masked write (``torch.where``), never a
data-dependent branch. Value checks of the input (NaN/Inf) run in strict mode only
(``lgvq.set_strict``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_choice, check_positive, check_tensor
from lgvq.ops import code_counts_and_sums, vector_quantize
from lgvq.ops.stats import code_counts
from lgvq.ops.nearest import METRICS
from lgvq.quantize.distributed import all_reduce_sum_, broadcast_, gather_rows
from lgvq.quantize.kmeans import kmeans, sample_rows


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # z's shape and dtype, straight-through
    indices: torch.Tensor  # int64, z.shape[:-1]
    loss: torch.Tensor  # fp32 scalar: commitment (+ codebook term unless EMA)
    perplexity: torch.Tensor  # exp(entropy) of this batch's code histogram
    usage: torch.Tensor  # fraction of codes used within the last ``usage_window`` training steps


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with straight-through gradients.

    Args:
        n_e: number of codes K.
        e_dim: code dimension d.
        beta: commitment weight. ``loss = beta*mean((z - sg(e))^2) + mean((sg(z) - e)^2)``
            (taming ``legacy=False``); with ``legacy=True`` the weights swap, as taming's
            default does: ``mean((z - sg(e))^2) + beta*mean((sg(z) - e)^2)``.
        metric: ``"l2"`` or ``"cos"`` (z and codes L2-normalised, as in ViT-VQGAN / lucidrains).
        ema: update codes as EMA of assigned vectors instead of by gradient; the loss is then
            the commitment term alone.
        decay, eps: EMA decay and Laplace smoothing of the EMA counts.
        kmeans_init: initialise the codebook by k-means on the first training batch
            (``kmeans_iters`` Lloyd steps; over all ranks' vectors when distributed).
        dead_code_threshold: restart codes whose EMA usage (assignments per step) falls below
            it with random vectors of the current batch; 0 disables.
        usage_window: the window, in training steps, of the running usage statistic.
        sane_index_shape: taming's flag — indices shaped (B, H, W) instead of flat.
        backend: ``"auto" | "triton" | "torch"``, passed to the ops.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        *,
        metric: str = "l2",
        legacy: bool = False,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        usage_window: int = 100,
        sane_index_shape: bool = False,
        remap=None,
        backend: str = "auto",
    ):
        super().__init__()
        check_positive("n_e", n_e)
        check_positive("e_dim", e_dim)
        check_positive("beta", beta, allow_zero=not legacy)
        check_choice("metric", metric, METRICS)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        check_positive("dead_code_threshold", dead_code_threshold, allow_zero=True)
        check_positive("usage_window", usage_window)
        if remap is not None:
            raise ValueError("remap (taming's index remapping) is not supported; pass remap=None")
        self.n_e, self.e_dim, self.beta = n_e, e_dim, float(beta)
        self.metric, self.legacy, self.ema = metric, legacy, ema
        self.decay, self.eps = decay, eps
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.usage_window = usage_window
        self.sane_index_shape = sane_index_shape
        self.backend = backend

        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)  # taming's init
        if ema:
            self.embedding.weight.requires_grad_(False)
            # every code starts as if it had one assigned vector: itself
            self.register_buffer("ema_counts", torch.ones(n_e))
            self.register_buffer("ema_sums", self.embedding.weight.detach().clone())
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # Host copy of ``not initialized``, so that a training step need not read the buffer
        # back from the device; refreshed when a state dict is loaded.
        self._kmeans_pending = kmeans_init
        self.register_buffer("usage_ema", torch.zeros(n_e))
        self.register_buffer("last_used", torch.full((n_e,), -1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    # ---- the two call styles ------------------------------------------------------------

    def forward(self, z: torch.Tensor):
        """taming face: z (B, C, *spatial) → (z_q, loss, (perplexity, None, indices))."""
        check_tensor("z", z, min_ndim=3, finite=False)
        if z.shape[1] != self.e_dim:
            raise ValueError(
                f"z must be channels-first (B, C={self.e_dim}, H, W); got shape {tuple(z.shape)}. "
                "For channels-last (..., d) inputs call .quantize(z)."
            )
        out = self.quantize(z.movedim(1, -1))
        indices = out.indices if self.sane_index_shape else out.indices.reshape(-1)
        return out.z_q.movedim(-1, 1), out.loss, (out.perplexity, None, indices)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Modern face: z (..., d) channels-last → QuantizerOutput."""
        check_tensor("z", z, min_ndim=1, finite=False)
        if z.shape[-1] != self.e_dim:
            raise ValueError(f"z must have last dimension e_dim={self.e_dim}, got shape {tuple(z.shape)}")
        flat = z.reshape(-1, self.e_dim)
        if self.metric == "cos":
            flat = F.normalize(flat, dim=-1)
        if self.training and self._kmeans_pending:
            self._kmeans_init(flat.detach())

        z_q, idx, loss = self._quantize_flat(flat)

        with torch.no_grad():
            if self.ema:
                counts, sums = code_counts_and_sums(flat.detach(), idx, self.n_e, backend=self.backend)
            else:
                counts, sums = code_counts(idx, self.n_e), None
            if self.training:
                # Only training steps synchronise: ranks take them in lockstep, while evaluation
                # may run on some ranks only (rank 0, say), where a collective would wait forever.
                all_reduce_sum_(*(t for t in (counts, sums) if t is not None))
                self._training_updates(flat.detach(), counts, sums)
            usage = self.codebook_usage()
        return QuantizerOutput(
            z_q=z_q.view(z.shape), indices=idx.view(z.shape[:-1]), loss=loss,
            perplexity=perplexity_from_counts(counts), usage=usage,
        )

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Codes for ``indices``; with taming's ``shape`` (B, H, W, C) returned as (B, C, H, W)."""
        check_tensor("indices", indices, dtypes=(torch.int64, torch.int32), finite=False)
        if bool((indices < 0).any()) or bool((indices >= self.n_e).any()):
            raise ValueError(f"indices must lie in [0, {self.n_e})")
        codes = self._entries(indices.long())
        if self.metric == "cos":
            codes = F.normalize(codes, dim=-1)
        if shape is not None:
            codes = codes.view(shape).permute(0, 3, 1, 2).contiguous()
        return codes

    # ---- internals ---------------------------------------------------------------------

    def _entries(self, indices: torch.Tensor) -> torch.Tensor:
        """The codes at ``indices`` (before the cosine normalisation)."""
        return self.embedding(indices)

    def _rewrites_codebook(self) -> bool:
        """Whether training steps write the codebook in place after the forward."""
        return self.ema or self.dead_code_threshold > 0

    def _codebook_for_step(self) -> torch.Tensor:
        codebook = self.embedding.weight
        if self.training and self._rewrites_codebook():
            # The op keeps the codebook for backward, which must read the codebook this step
            # used, not the one the in-place updates leave behind. clone() is differentiable.
            codebook = codebook.clone()
        return codebook

    def _quantize_flat(self, flat: torch.Tensor):
        codebook = self._codebook_for_step()
        if self.ema:
            z_q, idx, _ = vector_quantize(flat, codebook, self.beta, self.metric, backend=self.backend)
            loss = self.beta * F.mse_loss(flat.float(), z_q.detach().float())
        elif self.legacy:
            # mean((z-sg e)^2) + beta*mean((sg z-e)^2) == beta * [(1/beta)*commit + codebook term]
            z_q, idx, loss = vector_quantize(flat, codebook, 1.0 / self.beta, self.metric, backend=self.backend)
            loss = loss * self.beta
        else:
            z_q, idx, loss = vector_quantize(flat, codebook, self.beta, self.metric, backend=self.backend)
        return z_q, idx, loss

    def _training_updates(self, flat: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor | None) -> None:
        self.step += 1
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        self.usage_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if sums is not None:
            self._ema_update(counts, sums)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(flat, counts)

    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        self.ema_counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_counts.sum()
        smoothed = (self.ema_counts + self.eps) / (total + self.n_e * self.eps) * total
        self._set_codebook(self.ema_sums / smoothed[:, None])

    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Move every code whose usage fell below the threshold onto a batch vector.

        Every step draws one candidate row per code and writes it where a code is dead, so no
        step has to ask the device how many codes died (a host sync). Dead-ness is identical
        on every rank (usage_ema is built from all-reduced counts), and rank 0's candidates,
        drawn from all ranks' rows, are broadcast: every rank restarts the same codes with the
        same vectors. (Under a process group, gathering the rows exchanges their counts: one
        sync per step there.)
        """
        dead = (self.usage_ema < self.dead_code_threshold)[:, None]
        fresh = sample_rows(gather_rows(flat), self.n_e).to(self.embedding.weight.dtype)
        broadcast_(fresh)
        if self.metric == "cos":
            fresh = F.normalize(fresh, dim=-1)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.where(dead, fresh, self.embedding.weight))
        # a restarted code starts as an average code, so it gets a few steps to be picked
        self.usage_ema.copy_(torch.where(dead[:, 0], counts.sum() / self.n_e, self.usage_ema))
        if self.ema:
            self.ema_counts.copy_(torch.where(dead[:, 0], self.ema_counts.mean(), self.ema_counts))
            self.ema_sums.copy_(torch.where(dead, fresh.float() * self.ema_counts[:, None], self.ema_sums))

    def _kmeans_init(self, flat: torch.Tensor) -> None:
        pool = gather_rows(flat.float())
        centroids, counts = kmeans(pool, self.n_e, self.kmeans_iters, self.metric, backend=self.backend)
        broadcast_(centroids, counts)  # ranks' k-means runs draw different seeds: keep rank 0's
        self._set_codebook(centroids)
        if self.ema:
            weight = counts.clamp_min(1.0)  # an empty cluster still counts as one vector
            self.ema_counts.copy_(weight)
            self.ema_sums.copy_(centroids * weight[:, None])
        self.initialized.fill_(True)
        self._kmeans_pending = False

    def _set_codebook(self, weight: torch.Tensor) -> None:
        if self.metric == "cos":
            weight = F.normalize(weight, dim=-1)
        with torch.no_grad():
            self.embedding.weight.copy_(weight)

    def codebook_usage(self) -> torch.Tensor:
        """Fraction of codes assigned at least once in the last ``usage_window`` training steps."""
        recent = (self.last_used >= 0) & (self.step - self.last_used < self.usage_window)
        return recent.float().mean()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A taming checkpoint holds only ``embedding.weight``: keep this module's own
        statistics for the buffers it lacks, so such checkpoints load with strict=True."""
        if prefix + "embedding.weight" in state_dict:
            for name, buf in self.named_buffers(recurse=False):
                state_dict.setdefault(prefix + name, buf)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_host_state()

    def _refresh_host_state(self) -> None:
        """Re-read the host copies of buffer values after a load (one sync, at load time)."""
        self._kmeans_pending = not bool(self.initialized)

    def extra_repr(self) -> str:
        return (
            f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, metric={self.metric!r}, "
            f"ema={self.ema}, dead_code_threshold={self.dead_code_threshold}, backend={self.backend!r}"
        )
