"""``ResidualQuantizer``: residual VQ (SoundStream, EnCodec, RQ-VAE) on the fused residual op.

With r_0 = P_in z, stage l picks the code e_l nearest to r_l (to r_l / |r_l| with
``metric="cos"``) and leaves r_{l+1} = r_l − e_l; the output is z_q = P_out Σ_l e_l, straight
through to z (``lgvq.ops.residual_quantize``: all stages in one pass, no (N, K) matrix). The
codebooks are EMA codebooks, as in SoundStream and EnCodec (decay, Laplace smoothing, dead-code
restarts from the stage's inputs): each stage is a ``VectorQuantizer(ema=True)`` holding its
codes and statistics (``stages.{l}.embedding.weight``, ``stages.{l}.ema_counts``, ...), updated
from the counts and sums of its own inputs. The loss is the commitment term
β · Σ_l mean((r̂_l − sg e_l)²) (r̂_l: the stage's search input).

Factorised codes (Improved VQGAN / DAC): ``codebook_dim`` < ``e_dim`` adds the projections
P_in (e_dim → codebook_dim) and P_out back, learned with the model, and the stages work in the
low-dimensional space; with ``metric="cos"`` the codes and the stage inputs are l2-normalised
(DAC's factorised, l2-normalised codes of d = 8). One projection pair serves all stages (as
vector-quantize-pytorch's ``ResidualVQ(codebook_dim=...)``); DAC projects stage by stage.
"""

from __future__ import annotations

import torch
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.ops import code_counts_and_sums, residual_quantize, stage_inputs
from lgvq.ops.stats import code_counts
from lgvq.quantize.distributed import all_reduce_sum_
from lgvq.quantize.vector_quantizer import QuantizerOutput, VectorQuantizer, perplexity_from_counts


class ResidualQuantizer(nn.Module):
    """``num_stages`` residual stages of ``n_e`` EMA codes each (see the module docs).

    ``quantize(z)`` on channels-last (..., e_dim) → ``QuantizerOutput`` with indices
    (..., num_stages), the perplexity and codebook usage averaged over the stages;
    ``get_codebook_entry(indices)`` → P_out Σ_l e_l, (..., e_dim).
    """

    def __init__(
        self, n_e: int, e_dim: int, num_stages: int, beta: float = 0.25, *, codebook_dim: int | None = None,
        metric: str = "l2", decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.0,
        track_usage: bool = False, usage_window: int = 100, backend: str = "auto",
    ):
        super().__init__()
        check_positive("num_stages", num_stages)
        check_positive("e_dim", e_dim)
        codebook_dim = e_dim if codebook_dim is None else codebook_dim
        check_positive("codebook_dim", codebook_dim)
        self.n_e, self.e_dim, self.codebook_dim, self.num_stages = n_e, e_dim, codebook_dim, num_stages
        self.beta, self.metric, self.track_usage, self.backend = float(beta), metric, track_usage, backend
        factorised = codebook_dim != e_dim
        self.project_in = nn.Linear(e_dim, codebook_dim) if factorised else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, e_dim) if factorised else nn.Identity()
        self.stages = nn.ModuleList(
            VectorQuantizer(n_e, codebook_dim, beta, legacy=False, metric=metric, ema=True, decay=decay, eps=eps,
                            dead_code_threshold=dead_code_threshold, track_usage=track_usage,
                            usage_window=usage_window, backend=backend)
            for _ in range(num_stages)
        )

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        check_tensor("z", z, min_ndim=1, finite=False)
        if z.shape[-1] != self.e_dim:
            raise ValueError(f"z must have last dimension e_dim={self.e_dim}, got shape {tuple(z.shape)}")
        flat = self.project_in(z.reshape(-1, self.e_dim))
        # a copy: the op keeps it for backward, and the EMA steps below rewrite the codes in place
        codebooks = torch.stack([stage.embedding.weight for stage in self.stages])
        z_q, idx, losses = residual_quantize(flat, codebooks, metric=self.metric, backend=self.backend)
        counts = self._stage_updates(flat.detach(), codebooks, idx)
        with torch.no_grad():
            perplexity = torch.stack([perplexity_from_counts(c) for c in counts]).mean()
            usage = torch.stack([s.codebook_usage() for s in self.stages]).mean() if self.track_usage else None
        return QuantizerOutput(
            z_q=self.project_out(z_q).view(z.shape), indices=idx.view(*z.shape[:-1], self.num_stages),
            loss=self.beta * losses.sum(), perplexity=perplexity, usage=usage,
        )

    @torch.no_grad()
    def _stage_updates(self, flat: torch.Tensor, codebooks: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's code counts; in training also its EMA step and dead-code restarts on the
        counts and sums of its own inputs (replayed from the indices, one (N, d) buffer at a time)."""
        if not self.training:
            return [code_counts(i, self.n_e) for i in idx.unbind(-1)]
        counts = []
        for stage, inputs, stage_idx in zip(self.stages, stage_inputs(flat, codebooks, idx, metric=self.metric),
                                            idx.unbind(-1)):
            stage_counts, sums = code_counts_and_sums(inputs, stage_idx, self.n_e, backend=self.backend)
            all_reduce_sum_(stage_counts, sums)
            stage._training_updates(inputs, stage_counts, sums)  # the stage's own EMA rules
            counts.append(stage_counts)
        return counts

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (..., num_stages) → P_out Σ_l e_l (..., e_dim)."""
        check_tensor("indices", indices, min_ndim=1, dtypes=(torch.int64, torch.int32), finite=False)
        if indices.shape[-1] != self.num_stages:
            raise ValueError(f"indices must have num_stages={self.num_stages} in the last axis, got {tuple(indices.shape)}")
        summed = sum(stage.get_codebook_entry(i) for stage, i in zip(self.stages, indices.unbind(-1)))
        return self.project_out(summed)

    def extra_repr(self) -> str:
        return (f"n_e={self.n_e}, e_dim={self.e_dim}, codebook_dim={self.codebook_dim}, "
                f"num_stages={self.num_stages}, beta={self.beta}, metric={self.metric!r}")
