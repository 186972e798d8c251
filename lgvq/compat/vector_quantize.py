"""``VectorQuantize``: the face of lucidrains' vector-quantize-pytorch on lgvq's fused ops.

    from lgvq.compat import VectorQuantize        # instead of: from vector_quantize_pytorch import ...
    vq = VectorQuantize(dim=256, codebook_size=512, decay=0.8, commitment_weight=1.0)
    quantized, indices, commit_loss = vq(x)       # x (B, N, dim)

The constructor takes vector-quantize-pytorch's (version 1.32) arguments for the options
people use most, with its defaults and meaning; the state dict has its keys
(``_codebook.embed``, ``_codebook.embed_avg``, ``_codebook.cluster_size``, ``_codebook.initted``,
``project_in.*`` / ``project_out.*``), so its checkpoints load. What changes is the work: the
nearest-code search is ``lgvq.ops.nearest_code`` (no (N, K) distance matrix) and the EMA
statistics are ``lgvq.ops.code_counts_and_sums`` (no (N, K) one-hot). Its other options raise
a ValueError naming them, unless given at their default value.

Supported: ``dim``, ``codebook_size``, ``codebook_dim`` (a projection in and out when it
differs from ``dim``), ``decay``, ``eps``, ``commitment_weight``, ``kmeans_init`` /
``kmeans_iters``, ``threshold_ema_dead_code``, ``use_cosine_sim``, ``channel_last``,
``accept_image_fmap``, ``learnable_codebook`` / ``ema_update``, ``rotation_trick`` (on by
default for dim > 1, as in vector-quantize-pytorch; ``rotation_trick=False`` is the plain
straight-through estimator). A single codebook (``heads=1``).

Differences: k-means initialisation runs lgvq's k-means (the fused search, k-means++ seeds),
so its draws differ from vector-quantize-pytorch's; the codebook statistics are synchronised
over ranks whenever a process group is initialised, as vector-quantize-pytorch's default
``sync_codebook=None`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.ops import code_counts_and_sums, nearest_code
from lgvq.quantize.distributed import all_reduce_sum_, broadcast_, gather_rows
from lgvq.quantize.ema import ema_, laplace_smoothed_codes
from lgvq.quantize.kmeans import kmeans

#: vector-quantize-pytorch's options this face does not implement, with their defaults: passing
#: one at its default is accepted (it changes nothing), any other value raises.
UNSUPPORTED_DEFAULTS = {
    "heads": 1, "separate_codebook_per_head": False, "freeze_codebook": False, "sync_kmeans": True,
    "layernorm_after_project_in": False, "accept_3d_fmap": False, "commitment_use_cross_entropy_loss": False,
    "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False, "orthogonal_reg_max_codes": None,
    "codebook_diversity_loss_weight": 0.0, "codebook_diversity_temperature": 100.0,
    "stochastic_sample_codes": False, "sample_codebook_temp": 1.0, "straight_through": False,
    "directional_reparam": False, "directional_reparam_variance": 5e-3, "sync_codebook": None,
    "sync_affine_param": False, "vq_bridge": None, "manual_ema_update": False,
    "in_place_codebook_optimizer": None, "manual_in_place_optimizer_update": False, "affine_param": False,
    "affine_param_batch_decay": 0.99, "affine_param_codebook_decay": 0.9, "sync_update_v": 0.0,
    "return_zeros_for_masked_padding": True, "route_gradients_to_input": True,
}
#: forward keywords of vector-quantize-pytorch, with the values this face accepts.
UNSUPPORTED_FORWARD_DEFAULTS = {
    "indices": None, "mask": None, "lens": None, "topk": None, "sample_codebook_temp": None,
    "freeze_codebook": None, "return_loss_breakdown": False, "codebook_transform_fn": None,
    "ema_update_weight": None, "accum_ema_update": False, "ema_update": None,
}
#: vector-quantize-pytorch's l2norm epsilon (F.normalize's is 1e-12).
L2NORM_EPS = 1e-6


def _reject_unsupported(given: dict, defaults: dict, where: str) -> None:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {unknown}")
    changed = sorted(k for k, v in given.items() if v is not defaults[k] and v != defaults[k])
    if changed:
        raise ValueError(
            f"{where}: vector-quantize-pytorch options {changed} are not supported by lgvq.compat."
            "VectorQuantize; leave them at their defaults "
            f"({', '.join(f'{k}={defaults[k]!r}' for k in changed)})"
        )


def _l2norm(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1, eps=L2NORM_EPS)


def rotate_to(src: torch.Tensor, tgt: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, §4.2): rotate and rescale ``src`` onto ``tgt``
    (both (..., d)) by a map treated as a constant, so the forward value is ``tgt`` and the
    gradient reaches ``src`` rotated. Written as vector-quantize-pytorch computes it."""
    norm_src = src.norm(dim=-1, keepdim=True)
    norm_tgt = tgt.norm(dim=-1, keepdim=True)
    u = (src / norm_src.clamp(min=eps)).detach()
    q = (tgt / norm_tgt.clamp(min=eps)).detach()
    w = _l2norm(u + q).detach()
    rotated = src - 2 * (src * w).sum(-1, keepdim=True) * w + 2 * (src * u).sum(-1, keepdim=True) * q
    return rotated * (norm_tgt / norm_src.clamp(min=eps)).detach()


class _Codebook(nn.Module):
    """The codebook state under vector-quantize-pytorch's names and shapes (one codebook)."""

    def __init__(self, dim: int, codebook_size: int, kmeans_init: bool, use_cosine_sim: bool, learnable: bool):
        super().__init__()
        if kmeans_init:
            embed = torch.zeros(1, codebook_size, dim)
        else:
            embed = nn.init.kaiming_uniform_(torch.empty(1, codebook_size, dim))  # its uniform_init
            if use_cosine_sim:
                embed = _l2norm(embed)
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("cluster_size", torch.ones(1, codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        if learnable:
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)


class VectorQuantize(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` for one codebook (see the module docs).

    ``forward(x)`` → ``(quantized, indices, commit_loss)``: x (B, N, dim) (``channel_last``),
    (B, dim, N) (``channel_last=False``), (B, dim, H, W) (``accept_image_fmap``) or (B, dim)
    (one vector each). In training the codes are EMA-updated (``ema_update``, default unless
    ``learnable_codebook``), dead codes (EMA cluster size below ``threshold_ema_dead_code``)
    restarted from the batch, and ``commit_loss = commitment_weight · mse(sg(e), x)`` (``e``
    not detached when the codebook is learnable); in eval mode the loss is 0 and no gradient
    passes to x, as there.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        *,
        decay: float = 0.8,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        use_cosine_sim: bool = False,
        threshold_ema_dead_code: float = 0,
        channel_last: bool = True,
        accept_image_fmap: bool = False,
        commitment_weight: float = 1.0,
        rotation_trick: bool | None = None,
        ema_update: bool | None = None,
        learnable_codebook: bool | None = None,
        backend: str = "auto",
        **unsupported,
    ):
        super().__init__()
        _reject_unsupported(unsupported, UNSUPPORTED_DEFAULTS, "VectorQuantize")
        check_positive("dim", dim)
        check_positive("codebook_size", codebook_size)
        codebook_dim = dim if codebook_dim is None else codebook_dim
        check_positive("codebook_dim", codebook_dim)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        check_positive("threshold_ema_dead_code", threshold_ema_dead_code, allow_zero=True)
        check_positive("commitment_weight", commitment_weight, allow_zero=True)
        learnable_codebook = bool(learnable_codebook)
        ema_update = True if ema_update is None else ema_update  # vqp's default, learnable or not
        if ema_update and learnable_codebook:
            raise ValueError("learnable_codebook=True needs ema_update=False (the EMA would overwrite the learned codes)")
        if use_cosine_sim and learnable_codebook:
            raise ValueError("use_cosine_sim=True does not support learnable_codebook=True")
        self.dim, self.codebook_size, self.codebook_dim = dim, codebook_size, codebook_dim
        self.decay, self.eps = decay, eps
        self.kmeans_iters = kmeans_iters
        self.use_cosine_sim = use_cosine_sim
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.channel_last, self.accept_image_fmap = channel_last, accept_image_fmap
        self.commitment_weight = commitment_weight
        self.rotation_trick = dim > 1 if rotation_trick is None else rotation_trick
        self.ema_update, self.learnable_codebook = ema_update, learnable_codebook
        self.backend = backend
        projected = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if projected else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if projected else nn.Identity()
        self._codebook = _Codebook(codebook_dim, codebook_size, kmeans_init, use_cosine_sim, learnable_codebook)
        self._kmeans_pending = kmeans_init  # cleared once ``_codebook.initted`` is seen True

    @property
    def codebook(self) -> torch.Tensor:
        """The codes (codebook_size, codebook_dim)."""
        return self._codebook.embed[0]

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        codes = self.codebook[indices]
        if not self.channel_last or self.accept_image_fmap:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.get_codes_from_indices(indices))

    # ---- forward ------------------------------------------------------------------------

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x in any accepted layout → (B, N, dim)."""
        if self.accept_image_fmap:
            check_tensor("x", x, ndim=4, finite=False)
            return x.flatten(2).transpose(1, 2)
        check_tensor("x", x, min_ndim=2, finite=False)
        if x.dim() == 2:  # one vector per batch row
            return x[:, None]
        if x.dim() != 3:
            raise ValueError(f"x must be (B, N, dim), (B, dim) or, with accept_image_fmap, (B, dim, H, W); got {tuple(x.shape)}")
        return x if self.channel_last else x.transpose(1, 2)

    def _from_tokens(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) → the layout of x (``...``: the feature axis for quantized, none for indices)."""
        if self.accept_image_fmap:
            out = tokens.unflatten(1, x.shape[2:])
            return out.movedim(-1, 1) if tokens.dim() == 3 else out
        if x.dim() == 2:
            return tokens[:, 0]
        if not self.channel_last and tokens.dim() == 3:
            return tokens.transpose(1, 2)
        return tokens

    def forward(self, x: torch.Tensor, **options):
        _reject_unsupported(options, UNSUPPORTED_FORWARD_DEFAULTS, "VectorQuantize.forward")
        tokens = self._to_tokens(x)
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"x must have {self.dim} features (dim), got shape {tuple(x.shape)}")
        dtype, input_requires_grad = tokens.dtype, x.requires_grad
        z = self.project_in(tokens)
        if self.use_cosine_sim:
            z = _l2norm(z)
        flat = z.reshape(-1, self.codebook_dim).float()
        if self._kmeans_pending:  # one host sync per step until the codebook is initialised
            self._kmeans_pending = not bool(self._codebook.initted)
            if self._kmeans_pending:
                self._kmeans_init(flat.detach())

        codebook = self._codebook.embed[0]
        if not self.learnable_codebook:
            codebook = codebook.detach()
        indices, _ = nearest_code(flat.detach(), codebook.detach(), "cos" if self.use_cosine_sim else "l2",
                                  backend=self.backend)
        codes = codebook[indices].view(z.shape).to(dtype)  # gathered before the updates rewrite the codes
        if self.training:
            self._training_updates(flat.detach(), indices)

        loss = torch.zeros((), device=x.device, requires_grad=self.training)
        quantized = codes
        if self.training:
            if input_requires_grad:
                quantized = rotate_to(z, codes) if self.rotation_trick else z + (codes - z).detach()
            if self.commitment_weight > 0:
                committed = codes if self.learnable_codebook else codes.detach()
                loss = loss + F.mse_loss(committed, z) * self.commitment_weight
        quantized = self._from_tokens(self.project_out(quantized), x)
        return quantized, self._from_tokens(indices.view(z.shape[:-1]), x), loss

    # ---- codebook updates (vector-quantize-pytorch's rules, on the fused statistics) -------

    @torch.no_grad()
    def _training_updates(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        if not self.ema_update and self.threshold_ema_dead_code == 0:
            return
        counts, sums = code_counts_and_sums(flat, indices, self.codebook_size, backend=self.backend)
        all_reduce_sum_(counts, sums)
        book = self._codebook
        ema_(book.cluster_size, counts[None], self.decay)
        ema_(book.embed_avg, sums[None], self.decay)
        if self.ema_update:
            self._codes_from_averages()
        if self.threshold_ema_dead_code > 0:
            self._restart_dead_codes(flat)

    def _codes_from_averages(self) -> None:
        """embed = embed_avg / Laplace-smoothed cluster sizes (l2-normalised for cosine codes)."""
        book = self._codebook
        embed = laplace_smoothed_codes(book.cluster_size, book.embed_avg, self.eps)
        book.embed.data.copy_(_l2norm(embed) if self.use_cosine_sim else embed)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Codes whose EMA cluster size fell below the threshold restart at random batch vectors
        (at most one per batch vector this step, the rest later), with cluster size = threshold.
        The draws are vector-quantize-pytorch's, in its order."""
        book = self._codebook
        dead = (book.cluster_size[0] < self.threshold_ema_dead_code).nonzero().flatten()
        if dead.numel() == 0:  # the same on every rank: cluster sizes come from all-reduced counts
            return
        pool = gather_rows(flat)
        if self.use_cosine_sim:
            pool = _l2norm(pool)
        if dead.numel() > pool.shape[0]:
            dead = dead[torch.randperm(dead.numel(), device=flat.device)[: pool.shape[0]]].sort().values
        fresh = pool[torch.randperm(pool.shape[0], device=flat.device)[: dead.numel()]]
        broadcast_(dead, fresh)  # rank 0's draws everywhere: the codebooks stay identical
        book.embed.data[0, dead] = fresh.to(book.embed.dtype)
        book.cluster_size[0, dead] = self.threshold_ema_dead_code
        book.embed_avg[0, dead] = fresh * self.threshold_ema_dead_code

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        centroids, counts = kmeans(gather_rows(flat), self.codebook_size, self.kmeans_iters,
                                   "cos" if self.use_cosine_sim else "l2", backend=self.backend)
        broadcast_(centroids, counts)
        book = self._codebook
        book.embed_avg.copy_((centroids * counts[:, None])[None])
        book.cluster_size.copy_(counts[None])
        self._codes_from_averages()
        book.initted.fill_(True)
        self._kmeans_pending = False

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
            f"decay={self.decay}, use_cosine_sim={self.use_cosine_sim}, rotation_trick={self.rotation_trick}, "
            f"ema_update={self.ema_update}, learnable_codebook={self.learnable_codebook}, backend={self.backend!r}"
        )
