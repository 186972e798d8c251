"""vector-quantize-pytorch's codebook state and update rules, on lgvq's fused ops.

``Codebook`` holds what vector-quantize-pytorch's ``Codebook`` holds, under its names and
shapes (H codebooks of K codes of d features: ``embed`` and ``embed_avg`` (H, K, d),
``cluster_size`` (H, K), ``initted``), and applies its rules to a batch laid out as (H, M, d)
(H codebooks, M vectors each) with the chosen indices (H, M):

* EMA (``lgvq.quantize.ema``): N ← lerp(N, n, (1 − γ)·w), S ← lerp(S, s, (1 − γ)·w) with this
  step's counts n and sums s (padded positions excluded) and an optional per-code weight w;
  then e = S / Laplace-smoothed N (l2-normalised for cosine codes). ``accumulate=True`` only
  adds n and s to a pending sum that the next non-accumulating step adds in before its lerp.
* dead codes: codes whose N fell below the threshold restart at random batch vectors.
* k-means initialisation from the first training batch (lgvq's k-means: other draws).

The counts and sums are ``code_counts_and_sums`` (no (M, K) one-hot): one call for all H
codebooks, padded positions counted into one extra code that is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.ops import code_counts_and_sums, nearest_code
from lgvq.quantize.distributed import all_reduce_sum_, broadcast_, gather_rows
from lgvq.quantize.ema import ema_, laplace_smoothed_codes
from lgvq.quantize.kmeans import kmeans

#: vector-quantize-pytorch's l2norm epsilon (F.normalize's is 1e-12).
L2NORM_EPS = 1e-6


def l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1, eps=L2NORM_EPS)


class Codebook(nn.Module):
    """H codebooks of vector-quantize-pytorch (see the module docs)."""

    def __init__(
        self, dim: int, codebook_size: int, num_codebooks: int = 1, *, kmeans_init: bool = False,
        kmeans_iters: int = 10, use_cosine_sim: bool = False, learnable: bool = False, decay: float = 0.8,
        eps: float = 1e-5, threshold_ema_dead_code: float = 0.0, backend: str = "auto",
    ):
        super().__init__()
        if kmeans_init:
            embed = torch.zeros(num_codebooks, codebook_size, dim)
        else:
            embed = nn.init.kaiming_uniform_(torch.empty(num_codebooks, codebook_size, dim))  # its uniform_init
            if use_cosine_sim:
                embed = l2norm(embed)
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.ones(num_codebooks, codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        if learnable:
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)
        self.codebook_size, self.num_codebooks = codebook_size, num_codebooks
        self.kmeans_iters, self.use_cosine_sim = kmeans_iters, use_cosine_sim
        self.decay, self.eps, self.threshold_ema_dead_code = decay, eps, threshold_ema_dead_code
        self.backend = backend
        self._kmeans_pending = kmeans_init  # host copy of ``not initted``: no sync once initialised
        self._pending = None  # counts and sums accumulated by ``accumulate=True`` steps

    @property
    def metric(self) -> str:
        return "cos" if self.use_cosine_sim else "l2"

    def search(self, flat: torch.Tensor, codebooks: torch.Tensor | None = None) -> torch.Tensor:
        """Nearest codes (H, M) of ``flat`` (H, M, d), codebook h for rows h (no (M, K) matrix)."""
        codebooks = (self.embed if codebooks is None else codebooks).detach()
        return torch.stack([
            nearest_code(rows, book, self.metric, backend=self.backend)[0] for rows, book in zip(flat, codebooks)
        ])

    def gather(self, indices: torch.Tensor, codebooks: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (H, M, d) at ``indices`` (H, M)."""
        codebooks = self.embed if codebooks is None else codebooks
        return torch.gather(codebooks, 1, indices[..., None].expand(-1, -1, codebooks.shape[-1]))

    # ---- k-means initialisation ---------------------------------------------------------

    def init_if_pending(self, flat: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """k-means on the first training batch (H, M, d); padded rows (``mask`` False) left out."""
        if not self._kmeans_pending:
            return
        self._kmeans_pending = not bool(self.initted)  # one sync per step until initialised
        if self._kmeans_pending:
            self._kmeans_init(flat.detach().float(), mask)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor, mask: torch.Tensor | None) -> None:
        for h, rows in enumerate(flat):
            pool = gather_rows(rows if mask is None else rows[mask[h]])
            centroids, counts = kmeans(pool, self.codebook_size, self.kmeans_iters, self.metric, backend=self.backend)
            broadcast_(centroids, counts)
            self.embed_avg[h] = centroids * counts[:, None]
            self.cluster_size[h] = counts
        self.codes_from_averages()
        self.initted.fill_(True)
        self._kmeans_pending = False

    # ---- EMA statistics -----------------------------------------------------------------

    @torch.no_grad()
    def batch_statistics(self, flat: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None):
        """This batch's counts (H, K) and sums (H, K, d) over ranks; padded rows left out."""
        heads, k = self.num_codebooks, self.codebook_size
        offsets = torch.arange(heads, device=indices.device)[:, None] * k
        slots = indices + offsets
        if mask is not None:
            slots = slots.masked_fill(~mask, heads * k)  # the extra slot, dropped below
        counts, sums = code_counts_and_sums(flat.float(), slots, heads * k + 1, backend=self.backend)
        counts, sums = counts[:-1].view(heads, k), sums[:-1].view(heads, k, -1)
        all_reduce_sum_(counts, sums)
        return counts, sums

    @torch.no_grad()
    def track(self, counts: torch.Tensor, sums: torch.Tensor, weight=None, accumulate: bool = False) -> None:
        """Fold this batch's statistics into the EMA (``weight``: per code (K,) / (H, K), or a
        callable of (sums, counts) returning one), or only accumulate them (``accumulate``)."""
        if callable(weight):
            weight = weight(sums, counts)
        if accumulate:
            self._pending = (counts, sums) if self._pending is None else tuple(
                a + b for a, b in zip(self._pending, (counts, sums)))
            return
        if self._pending is not None:
            counts, sums = counts + self._pending[0], sums + self._pending[1]
            self._pending = None
        if weight is not None:
            weight = torch.as_tensor(weight, device=counts.device).expand_as(counts)
        ema_(self.cluster_size, counts, self.decay, weight)
        ema_(self.embed_avg, sums, self.decay, weight)

    @torch.no_grad()
    def codes_from_averages(self) -> None:
        """embed = embed_avg / Laplace-smoothed cluster sizes (l2-normalised for cosine codes)."""
        embed = laplace_smoothed_codes(self.cluster_size, self.embed_avg, self.eps)
        self.embed.data.copy_(l2norm(embed) if self.use_cosine_sim else embed)

    @torch.no_grad()
    def update(self, flat, indices, mask=None, *, ema_update: bool, weight=None, accumulate: bool = False) -> None:
        """One training step's codebook updates, in vector-quantize-pytorch's order: statistics,
        codes from the averages (``ema_update``), dead-code restarts."""
        if not ema_update and self.threshold_ema_dead_code == 0:
            return
        self.track(*self.batch_statistics(flat, indices, mask), weight, accumulate)
        if accumulate:
            return
        if ema_update:
            self.codes_from_averages()
        self.restart_dead_codes(flat, mask)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Codes whose EMA cluster size fell below the threshold restart at random batch vectors
        (at most one per batch vector this step, the rest later), with cluster size = threshold.
        The draws are vector-quantize-pytorch's, in its order (codebook by codebook)."""
        if self.threshold_ema_dead_code == 0:
            return
        dead_codes = self.cluster_size < self.threshold_ema_dead_code
        if not bool(dead_codes.any()):
            return
        for h, rows in enumerate(flat):
            dead = dead_codes[h].nonzero().flatten()
            pool = gather_rows(rows if mask is None else rows[mask[h]])
            if pool.shape[0] == 0:  # (a codebook without dead codes still draws, as there)
                continue
            if self.use_cosine_sim:
                pool = l2norm(pool)
            if dead.numel() > pool.shape[0]:
                dead = dead[torch.randperm(dead.numel(), device=flat.device)[: pool.shape[0]]].sort().values
            fresh = pool[torch.randperm(pool.shape[0], device=flat.device)[: dead.numel()]].float()
            broadcast_(dead, fresh)  # rank 0's draws everywhere: the codebooks stay identical
            self.embed.data[h, dead] = fresh.to(self.embed.dtype)
            self.cluster_size[h, dead] = self.threshold_ema_dead_code
            self.embed_avg[h, dead] = fresh * self.threshold_ema_dead_code

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._kmeans_pending = not bool(self.initted)
