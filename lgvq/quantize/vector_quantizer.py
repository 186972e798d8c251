"""``VectorQuantizer``: a drop-in quantizer on the fused ops.

Two faces:

* taming's — ``VectorQuantizer(n_e, e_dim, beta)`` takes taming-transformers'
  ``VectorQuantizer2`` arguments with their defaults and meaning (``legacy=True`` weighting,
  ``remap`` / ``unknown_index`` index remapping, ``sane_index_shape``), keeps the codebook in
  ``embedding.weight``, and ``forward(z)`` on (B, C, H, W) returns
  ``(z_q, loss, (perplexity, None, indices))``; ``get_codebook_entry(indices, shape)`` inverts
  it. Taming-based code (the LG-VQ release among it) swaps it in by changing one import, and
  with the statistics off (the default) its state dict is taming's, so checkpoints go both ways.
  One difference: taming returns ``perplexity=None``, this returns the batch's perplexity.
* modern — ``quantize(z)`` on channels-last (..., d) returning a ``QuantizerOutput``, with
  lgvq's conventions: indices always shaped ``z.shape[:-1]`` and never remapped.

Options: cosine codes, EMA codebook updates (decay, Laplace smoothing, no codebook
gradient), k-means initialisation from the first training batch, dead-code restarts from
the batch, a running codebook-usage statistic, perplexity. Non-gradient state is
synchronised over ranks when a process group is initialised (``lgvq.quantize.distributed``).
Each option's buffers exist only while it is on, so the state dict holds only what the
enabled features need.

A training step makes no device→host sync (after the k-means initialisation, a one-off): every
statistic stays on the device and every update is a masked write (``torch.where``), never a
data-dependent branch. Value checks of the input (NaN/Inf) run in strict mode only
(``lgvq.set_strict``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_between, check_choice, check_count, check_positive, check_sizes, check_tensor
from lgvq.ops import code_counts_and_sums, vector_quantize
from lgvq.ops.stats import code_counts
from lgvq.ops.nearest import METRICS
from lgvq.ops.softmax import codebook_softmax_sums, entropy_from_sums
from lgvq.quantize.distributed import all_reduce_sum_, broadcast_, gather_rows
from lgvq.quantize.ema import ema_, laplace_smoothed_codes
from lgvq.quantize.kmeans import kmeans, sample_rows
from lgvq.quantize.usage import mark_used_, recent_usage


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # z's shape and dtype, straight-through
    indices: torch.Tensor  # int64, z.shape[:-1]
    loss: torch.Tensor  # fp32 scalar: commitment (+ codebook term unless EMA)
    perplexity: torch.Tensor  # exp(entropy) of this batch's code histogram
    usage: torch.Tensor | None  # fraction of codes used in the last ``usage_window`` training steps
    # (None unless the quantizer was built with track_usage=True)


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with straight-through gradients.

    Args:
        n_e: number of codes K.
        e_dim: code dimension d.
        beta: the weight taming's ``VectorQuantizer2`` gives it. With ``legacy=True``
            (taming's default): ``loss = mean((z - sg(e))^2) + beta*mean((sg(z) - e)^2)``;
            with ``legacy=False`` (taming's fix, CVQ-VAE's and ``lgvq.ops.vector_quantize``'s
            convention): ``loss = beta*mean((z - sg(e))^2) + mean((sg(z) - e)^2)``. With
            ``ema=True`` there is no codebook term and ``loss = beta*mean((z - sg(e))^2)``.
        remap: taming's post-hoc index remapping: a ``.npy`` file of the U code indices in use
            (``used``). The taming face then returns, for code ``k``, its position in ``used``
            (indices shaped (N, 1), or (B, H, W) with ``sane_index_shape``), and
            ``get_codebook_entry`` maps positions back to codes.
        unknown_index: what a code missing from ``used`` becomes: ``"random"`` (a random
            position, taming's default), ``"extra"`` (the extra position U) or an int.
        sane_index_shape: indices shaped (B, H, W) instead of flat, as in taming.
        legacy: taming's loss weighting (default True, as in taming); see ``beta``.
        metric: ``"l2"`` or ``"cos"`` (z and codes L2-normalised, as in ViT-VQGAN / lucidrains).
        ema: update codes as EMA of assigned vectors instead of by gradient.
        decay, eps: EMA decay and Laplace smoothing of the EMA counts (``decay`` also sets the
            averaging of the dead-code usage statistic).
        kmeans_init: initialise the codebook by k-means on the first training batch
            (``kmeans_iters`` Lloyd steps; over all ranks' vectors when distributed).
        dead_code_threshold: restart codes whose EMA usage (assignments per step) falls below
            it with random vectors of the current batch; 0 disables.
        track_usage: keep the running codebook-usage statistic (``QuantizerOutput.usage``,
            ``codebook_usage()``) over the last ``usage_window`` training steps.
        entropy_loss_ratio: LlamaGen's entropy loss: in training, add ``entropy_loss_ratio`` ×
            (mean per-sample entropy − entropy of the batch's average probabilities) of
            ``softmax(−‖z − e‖² / entropy_temperature)`` over all codes (unit vectors with
            ``metric="cos"``), computed without the N×K matrix (``lgvq.ops.softmax``); 0 disables.
        entropy_temperature: its temperature (LlamaGen's 0.01).
        backend: ``"auto" | "triton" | "torch"``, passed to the ops.

    Buffers, and so state-dict keys, exist only for the features that are on: ``ema_counts``
    and ``ema_sums`` (ema), ``initialized`` (kmeans_init), ``usage_ema`` (dead-code restarts),
    ``last_used`` and ``step`` (track_usage), ``used`` (remap). With none on, the state dict
    is taming's: ``embedding.weight`` (plus ``used`` with remap).
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap: str | os.PathLike | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
        *,
        metric: str = "l2",
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        track_usage: bool = False,
        usage_window: int = 100,
        entropy_loss_ratio: float = 0.0,
        entropy_temperature: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__()
        check_count("n_e", n_e)
        check_count("e_dim", e_dim)
        check_positive("beta", beta, allow_zero=not legacy or ema)
        check_choice("metric", metric, METRICS)
        check_between("decay", decay, 0.0, 1.0)
        check_positive("eps", eps)  # Laplace smoothing: eps <= 0 lets an unused code divide by ~0
        check_count("kmeans_iters", kmeans_iters)
        check_positive("dead_code_threshold", dead_code_threshold, allow_zero=True)
        check_count("usage_window", usage_window)
        check_positive("entropy_loss_ratio", entropy_loss_ratio, allow_zero=True)
        check_positive("entropy_temperature", entropy_temperature)
        self.entropy_loss_ratio, self.entropy_temperature = entropy_loss_ratio, entropy_temperature
        self.n_e, self.e_dim, self.beta = n_e, e_dim, float(beta)
        self.metric, self.legacy, self.ema = metric, legacy, ema
        self.decay, self.eps = decay, eps
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.track_usage, self.usage_window = track_usage, usage_window
        self.sane_index_shape = sane_index_shape
        self.backend = backend

        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)  # taming's init
        if ema:
            self.embedding.weight.requires_grad_(False)
            # every code starts as if it had one assigned vector: itself
            self.register_buffer("ema_counts", torch.ones(n_e))
            self.register_buffer("ema_sums", self.embedding.weight.detach().clone())
        if kmeans_init:
            self.register_buffer("initialized", torch.tensor(False))
        # Host copy of ``not initialized``, so that a training step need not read the buffer
        # back from the device; refreshed when a state dict is loaded.
        self._kmeans_pending = kmeans_init
        if dead_code_threshold > 0:
            self.register_buffer("usage_ema", torch.zeros(n_e))
        if track_usage:
            self.register_buffer("last_used", torch.full((n_e,), -1, dtype=torch.int64))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.remap = remap
        self.re_embed = n_e  # the number of distinct indices the taming face returns
        if remap is not None:
            self.register_buffer("used", _load_used_indices(remap, n_e))
            self.unknown_index = _check_unknown_index(unknown_index, len(self.used))
            self.re_embed = len(self.used) + (unknown_index == "extra")

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    # ---- the two call styles ------------------------------------------------------------

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        """taming face: z (B, C, *spatial) → (z_q, loss, (perplexity, None, indices)).

        ``temp``, ``rescale_logits`` and ``return_logits`` exist, as in taming, only so that
        code written for its GumbelQuantize calls this unchanged: taming accepts only their
        neutral values (``None`` or 1.0, False, False), and so does this.
        """
        if not (temp is None or temp == 1.0):
            raise ValueError(f"temp must be None or 1.0 (taming's interface, for GumbelQuantize), got {temp}")
        if rescale_logits or return_logits:
            raise ValueError(
                "rescale_logits and return_logits must be False (taming's interface, for GumbelQuantize)"
            )
        check_tensor("z", z, min_ndim=3, finite=False)
        if z.shape[1] != self.e_dim:
            raise ValueError(
                f"z must be channels-first (B, C={self.e_dim}, H, W); got shape {tuple(z.shape)}. "
                "For channels-last (..., d) inputs call .quantize(z)."
            )
        out = self.quantize(z.movedim(1, -1))
        indices = out.indices
        if self.remap is not None:
            indices = self.remap_to_used(indices)
        if self.sane_index_shape:
            indices = indices.reshape(out.indices.shape)  # (B, *spatial)
        else:  # taming's shapes: flat, or (N, 1) once remapped
            indices = indices.reshape(-1, 1) if self.remap is not None else indices.reshape(-1)
        return out.z_q.movedim(-1, 1), out.loss, (out.perplexity, None, indices)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Modern face: z (..., d) channels-last → QuantizerOutput (indices of codebook rows)."""
        check_tensor("z", z, min_ndim=1, finite=False)
        if z.shape[-1] != self.e_dim:
            raise ValueError(f"z must have last dimension e_dim={self.e_dim}, got shape {tuple(z.shape)}")
        flat = z.reshape(-1, self.e_dim)
        if self.metric == "cos":
            flat = F.normalize(flat, dim=-1)
        if self.training and self._kmeans_pending:
            self._kmeans_init(flat.detach())

        z_q, idx, loss = self._quantize_flat(flat)
        if self.training and self.entropy_loss_ratio > 0:
            loss = loss + self.entropy_loss_ratio * self._entropy_loss(flat)

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
            usage = self.codebook_usage() if self.track_usage else None
        return QuantizerOutput(
            z_q=z_q.view(z.shape), indices=idx.view(z.shape[:-1]), loss=loss,
            perplexity=perplexity_from_counts(counts), usage=usage,
        )

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """Codes for ``indices``; with taming's ``shape`` (B, H, W, C) returned as (B, C, H, W).
        With ``remap``, ``indices`` are positions in ``used``, as the taming face returns them."""
        check_tensor("indices", indices, dtypes=(torch.int64, torch.int32), finite=False)
        if bool((indices < 0).any()) or bool((indices >= self.re_embed).any()):
            raise ValueError(f"indices must lie in [0, {self.re_embed})")
        indices = indices.long()
        if self.remap is not None:
            indices = self.unmap_to_all(indices)
        codes = self._entries(indices)
        if self.metric == "cos":
            codes = F.normalize(codes, dim=-1)
        if shape is not None:
            b, h, w, c = check_sizes("shape", shape, 4, "(B, H, W, C)")
            if c != self.e_dim or b * h * w != indices.numel():
                raise ValueError(
                    f"shape must be (B, H, W, C={self.e_dim}) with B·H·W = {indices.numel()} indices, got {tuple(shape)}"
                )
            codes = codes.view(shape).permute(0, 3, 1, 2).contiguous()
        return codes

    # ---- taming's index remapping --------------------------------------------------------

    def remap_to_used(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices → their positions in ``used`` (the first, if listed twice); codes not
        in ``used`` become ``unknown_index`` (a random position for ``"random"``)."""
        count = len(self.used)
        # position of each code in ``used`` through an (n_e,) table: O(N + K), no (N, U) match
        table = torch.full((self.n_e,), count, dtype=torch.int64, device=indices.device)
        table.scatter_reduce_(0, self.used.to(indices.device), torch.arange(count, device=indices.device), "amin")
        positions = table[indices]
        unknown = positions == count
        if self.unknown_index == "random":
            # taming's draw (global RNG, same call), so seeded runs pick the same positions
            positions[unknown] = torch.randint(0, self.re_embed, size=positions[unknown].shape).to(indices.device)
        else:
            positions[unknown] = self.unknown_index
        return positions

    def unmap_to_all(self, indices: torch.Tensor) -> torch.Tensor:
        """Positions in ``used`` → code indices; the extra position maps to ``used[0]``, as in taming."""
        return self.used.to(indices.device)[indices.masked_fill(indices >= len(self.used), 0)]

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

    def _entropy_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """LlamaGen's entropy loss on −distance logits (the codebook this step quantised with)."""
        codebook = self._codebook_for_step()
        if self.metric == "cos":  # −‖ẑ − ê‖², as LlamaGen's l2-normalised codebook gives
            codebook = F.normalize(codebook, dim=-1)
        entropy_sum, sums = codebook_softmax_sums(
            flat, codebook, metric="l2", temperature=self.entropy_temperature, backend=self.backend
        )
        sample, avg = entropy_from_sums(entropy_sum, sums, flat.shape[0])
        return sample - avg

    def _training_updates(self, flat: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor | None) -> None:
        if self.track_usage:
            mark_used_(self.last_used, self.step, counts)
        if sums is not None:
            self._ema_update(counts, sums)
        if self.dead_code_threshold > 0:
            self.usage_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self._restart_dead_codes(flat, counts)

    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        ema_(self.ema_counts, counts, self.decay)
        ema_(self.ema_sums, sums, self.decay)
        self._set_codebook(laplace_smoothed_codes(self.ema_counts, self.ema_sums, self.eps))

    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Move every code whose usage fell below the threshold onto a batch vector.

        Every step draws one candidate row per code and writes it where a code is dead, so no
        step has to ask the device how many codes died (a host sync). Dead-ness is identical
        on every rank (usage_ema is built from all-reduced counts), and rank 0's candidates,
        drawn from all ranks' rows, are broadcast: every rank restarts the same codes with the
        same vectors. (Under a process group, gathering the rows exchanges their counts: one
        sync per step there.)
        """
        fresh = sample_rows(gather_rows(flat), self.n_e).to(self.embedding.weight.dtype)
        broadcast_(fresh)
        if self.metric == "cos":
            fresh = F.normalize(fresh, dim=-1)
        # a NaN/Inf candidate is not adopted (its code stays dead until a finite one is drawn),
        # decided on the device: no sync, and one bad batch row cannot poison the codebook
        dead = (self.usage_ema < self.dead_code_threshold)[:, None] & torch.isfinite(fresh).all(dim=1, keepdim=True)
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
        if not self.track_usage:
            raise RuntimeError("codebook_usage() needs the quantizer built with track_usage=True")
        return recent_usage(self.last_used, self.step, self.usage_window)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints of other configurations load with strict=True: a buffer this module has
        and the checkpoint lacks (a taming checkpoint holds only ``embedding.weight``) keeps its
        current value; a statistic of a feature that is off here (a checkpoint written when
        every lgvq quantizer kept them all) is dropped. A loaded codebook counts as initialised:
        k-means initialisation does not overwrite it."""
        if prefix + "embedding.weight" in state_dict:
            own = dict(self.named_buffers(recurse=False))
            if "initialized" in own:  # the checkpoint's codebook must not be replaced by k-means
                state_dict.setdefault(prefix + "initialized", torch.tensor(True))
            for name, buf in own.items():
                state_dict.setdefault(prefix + name, buf)
            for name in OPTIONAL_STATISTICS - own.keys():
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_host_state()

    def _refresh_host_state(self) -> None:
        """Re-read the host copies of buffer values after a load (one sync, at load time)."""
        self._kmeans_pending = self.kmeans_init and not bool(self.initialized)

    def extra_repr(self) -> str:
        return (
            f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}, metric={self.metric!r}, "
            f"ema={self.ema}, dead_code_threshold={self.dead_code_threshold}, backend={self.backend!r}"
        )


#: The statistics buffers of optional features (see the class docstring).
OPTIONAL_STATISTICS = frozenset({"initialized", "usage_ema", "last_used", "step"})


def _load_used_indices(path, n_e: int) -> torch.Tensor:
    """taming's ``remap`` file: a 1-D .npy array of distinct code indices in [0, n_e)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"remap must be the path of a .npy file of used code indices, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"remap file not found: {path}")
    import numpy as np  # only taming's remap files need it

    used = torch.from_numpy(np.asarray(np.load(path)))
    if used.dim() != 1 or used.numel() == 0 or used.dtype.is_floating_point or used.dtype == torch.bool:
        raise ValueError(f"remap file {path} must hold a non-empty 1-D integer array, got {used.dtype} {tuple(used.shape)}")
    used = used.long()
    if bool((used < 0).any()) or bool((used >= n_e).any()):
        raise ValueError(f"remap file {path} holds indices outside [0, n_e={n_e})")
    return used


def _check_unknown_index(unknown_index, num_used: int):
    """"random", "extra" (→ the extra position num_used) or an int position."""
    if unknown_index == "extra":
        return num_used
    if unknown_index == "random":
        return unknown_index
    if isinstance(unknown_index, bool) or not isinstance(unknown_index, int) or not 0 <= unknown_index < num_used:
        raise ValueError(
            f"unknown_index must be 'random', 'extra' or an int in [0, {num_used}), got {unknown_index!r}"
        )
    return unknown_index
