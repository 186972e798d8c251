"""``VectorQuantize``: the face of lucidrains' vector-quantize-pytorch on lgvq's fused ops.

    from lgvq.compat import VectorQuantize        # instead of: from vector_quantize_pytorch import ...
    vq = VectorQuantize(dim=256, codebook_size=512, decay=0.8, commitment_weight=1.0)
    quantized, indices, commit_loss = vq(x)       # x (B, N, dim)

The constructor takes vector-quantize-pytorch's (version 1.32) arguments for the options
people use most, with its defaults and meaning; the state dict has its keys
(``_codebook.embed``, ``_codebook.embed_avg``, ``_codebook.cluster_size``, ``_codebook.initted``,
``project_in.*`` / ``project_out.*``), so its checkpoints load. What changes is the work: the
nearest-code search is ``lgvq.ops.nearest_code`` (no (N, K) distance matrix) and the EMA
statistics are ``lgvq.ops.code_counts_and_sums`` (no (N, K) one-hot); see
``lgvq.compat.codebook``. Its other options raise a ValueError naming them, unless given at
their default value.

Supported: ``dim``, ``codebook_size``, ``codebook_dim`` (a projection in and out when
``codebook_dim · heads`` differs from ``dim``), ``heads`` with ``separate_codebook_per_head``
(one codebook per head, or one shared by all heads), ``decay``, ``eps``,
``commitment_weight``, ``kmeans_init`` / ``kmeans_iters``, ``threshold_ema_dead_code``,
``use_cosine_sim``, ``channel_last``, ``accept_image_fmap``, ``accept_3d_fmap``,
``learnable_codebook`` / ``ema_update``, ``freeze_codebook``, ``rotation_trick`` (on by default
for dim > 1, as in vector-quantize-pytorch; ``rotation_trick=False`` is the plain
straight-through estimator). ``forward`` takes ``mask`` (B, N) or ``lens`` (B,) for padded
sequences (padded positions are left out of the codebook statistics and the loss, and come
back as zeros with index -1), ``ema_update_weight`` (per code, or a callable of the batch's
sums and counts), ``accum_ema_update``, ``ema_update`` and ``freeze_codebook``.

Differences: k-means initialisation runs lgvq's k-means (the fused search, k-means++ seeds),
so its draws differ from vector-quantize-pytorch's; the codebook statistics are synchronised
over ranks whenever a process group is initialised, as vector-quantize-pytorch's default
``sync_codebook=None`` does; with a mask the commitment loss compares the codes with the
vectors that were quantized (projected, l2-normalised for cosine codes), where
vector-quantize-pytorch compares them with the raw input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.compat.codebook import Codebook, l2norm

#: vector-quantize-pytorch's options this face does not implement, with their defaults: passing
#: one at its default is accepted (it changes nothing), any other value raises.
UNSUPPORTED_DEFAULTS = {
    "sync_kmeans": True, "layernorm_after_project_in": False, "commitment_use_cross_entropy_loss": False,
    "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False, "orthogonal_reg_max_codes": None,
    "codebook_diversity_loss_weight": 0.0, "codebook_diversity_temperature": 100.0,
    "stochastic_sample_codes": False, "sample_codebook_temp": 1.0, "straight_through": False,
    "directional_reparam": False, "directional_reparam_variance": 5e-3, "sync_codebook": None,
    "sync_affine_param": False, "vq_bridge": None, "manual_ema_update": False,
    "in_place_codebook_optimizer": None, "manual_in_place_optimizer_update": False, "affine_param": False,
    "affine_param_batch_decay": 0.99, "affine_param_codebook_decay": 0.9, "sync_update_v": 0.0,
    "return_zeros_for_masked_padding": True, "route_gradients_to_input": True,
}
#: forward keywords of vector-quantize-pytorch this face does not implement, with their defaults.
UNSUPPORTED_FORWARD_DEFAULTS = {
    "topk": None, "sample_codebook_temp": None, "return_loss_breakdown": False, "codebook_transform_fn": None,
}


def reject_unsupported(given: dict, defaults: dict, where: str) -> None:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {unknown}")
    changed = sorted(k for k, v in given.items() if v is not defaults[k] and v != defaults[k])
    if changed:
        raise ValueError(
            f"{where}: vector-quantize-pytorch options {changed} are not supported by lgvq.compat; "
            f"leave them at their defaults ({', '.join(f'{k}={defaults[k]!r}' for k in changed)})"
        )


def rotate_to(src: torch.Tensor, tgt: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The rotation trick (Fifty et al. 2024, §4.2): rotate and rescale ``src`` onto ``tgt``
    (both (..., d)) by a map treated as a constant, so the forward value is ``tgt`` and the
    gradient reaches ``src`` rotated. Written as vector-quantize-pytorch computes it."""
    norm_src = src.norm(dim=-1, keepdim=True)
    norm_tgt = tgt.norm(dim=-1, keepdim=True)
    u = (src / norm_src.clamp(min=eps)).detach()
    q = (tgt / norm_tgt.clamp(min=eps)).detach()
    w = l2norm(u + q).detach()
    rotated = src - 2 * (src * w).sum(-1, keepdim=True) * w + 2 * (src * u).sum(-1, keepdim=True) * q
    return rotated * (norm_tgt / norm_src.clamp(min=eps)).detach()


def commit_and_pass_gradient(z, codes, *, route_gradient: bool, rotation_trick: bool, weight: float,
                             detach_codes: bool, mask=None):
    """A training step's output and loss for vectors z and their codes (both (..., d)).

    quantized = codes in value; with ``route_gradient`` (vector-quantize-pytorch: when its
    input needs a gradient) the gradient reaches z by the rotation trick or straight through. loss = weight · mean over the (unpadded: ``mask`` (...), True = kept)
    vectors and features of (sg(codes) − z)² (codes not detached when the codebook learns).
    """
    quantized = codes
    if route_gradient:
        quantized = rotate_to(z, codes) if rotation_trick else z + (codes - z).detach()
    loss = torch.zeros((), device=z.device, requires_grad=True)
    if weight > 0:
        error = F.mse_loss(codes.detach() if detach_codes else codes, z, reduction="none")
        if mask is None:
            loss = loss + error.mean() * weight
        else:
            kept = mask.to(error.dtype)
            loss = loss + (error.sum(-1) * kept).sum() / (kept.sum() * z.shape[-1]).clamp_min(1) * weight
    return quantized, loss


def lens_to_mask(lens: torch.Tensor, length: int) -> torch.Tensor:
    check_tensor("lens", lens, ndim=1, dtypes=(torch.int64, torch.int32), finite=False)
    return torch.arange(length, device=lens.device) < lens[:, None]


class VectorQuantize(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` (see the module docs).

    ``forward(x)`` → ``(quantized, indices, commit_loss)``: x (B, N, dim) (``channel_last``),
    (B, dim, N) (``channel_last=False``), (B, dim, H, W) (``accept_image_fmap``), (B, dim, D, H, W)
    (``accept_3d_fmap``) or (B, dim) (one vector each); indices gain a last axis of size
    ``heads`` when heads > 1. In training the codes are EMA-updated (``ema_update``, default
    unless ``learnable_codebook``), dead codes (EMA cluster size below
    ``threshold_ema_dead_code``) restarted from the batch, and
    ``commit_loss = commitment_weight · mse(sg(e), x)`` (``e`` not detached when the codebook
    is learnable); in eval mode the loss is 0 and no gradient passes to x, as there.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        heads: int = 1,
        separate_codebook_per_head: bool = False,
        decay: float = 0.8,
        eps: float = 1e-5,
        freeze_codebook: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        *,
        use_cosine_sim: bool = False,
        threshold_ema_dead_code: float = 0,
        channel_last: bool = True,
        accept_image_fmap: bool = False,
        accept_3d_fmap: bool = False,
        commitment_weight: float = 1.0,
        rotation_trick: bool | None = None,
        ema_update: bool | None = None,
        learnable_codebook: bool | None = None,
        backend: str = "auto",
        **unsupported,
    ):
        super().__init__()
        reject_unsupported(unsupported, UNSUPPORTED_DEFAULTS, "VectorQuantize")
        check_positive("dim", dim)
        check_positive("codebook_size", codebook_size)
        check_positive("heads", heads)
        codebook_dim = dim if codebook_dim is None else codebook_dim
        check_positive("codebook_dim", codebook_dim)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        check_positive("eps", eps)
        check_positive("threshold_ema_dead_code", threshold_ema_dead_code, allow_zero=True)
        check_positive("commitment_weight", commitment_weight, allow_zero=True)
        if accept_image_fmap and accept_3d_fmap:
            raise ValueError("accept_image_fmap and accept_3d_fmap cannot both be True")
        learnable_codebook = bool(learnable_codebook)
        ema_update = True if ema_update is None else ema_update  # vqp's default, learnable or not
        if ema_update and learnable_codebook:
            raise ValueError("learnable_codebook=True needs ema_update=False (the EMA would overwrite the learned codes)")
        if use_cosine_sim and learnable_codebook:
            raise ValueError("use_cosine_sim=True does not support learnable_codebook=True")
        self.dim, self.codebook_size, self.codebook_dim = dim, codebook_size, codebook_dim
        self.heads, self.separate_codebook_per_head = heads, separate_codebook_per_head
        self.decay, self.eps = decay, eps
        self.use_cosine_sim = use_cosine_sim
        self.channel_last, self.accept_image_fmap, self.accept_3d_fmap = channel_last, accept_image_fmap, accept_3d_fmap
        self.commitment_weight = commitment_weight
        self.rotation_trick = dim > 1 if rotation_trick is None else rotation_trick
        self.ema_update, self.learnable_codebook, self.freeze_codebook = ema_update, learnable_codebook, freeze_codebook
        self.backend = backend
        self.has_projections = codebook_dim * heads != dim
        self.project_in = nn.Linear(dim, codebook_dim * heads) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim * heads, dim) if self.has_projections else nn.Identity()
        self._codebook = Codebook(
            codebook_dim, codebook_size, heads if separate_codebook_per_head else 1, kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters, use_cosine_sim=use_cosine_sim, learnable=learnable_codebook, decay=decay,
            eps=eps, threshold_ema_dead_code=threshold_ema_dead_code, backend=backend,
        )

    @property
    def codebook(self) -> torch.Tensor:
        """The codes: (codebook_size, codebook_dim), or (heads, codebook_size, codebook_dim)
        with a codebook per head."""
        return self._codebook.embed if self.separate_codebook_per_head else self._codebook.embed[0]

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of ``indices`` as ``forward`` returns them; with a codebook per head (B, ..., heads)
        → (B, ..., heads · codebook_dim), channels moved to axis 1 for channel-first layouts."""
        check_indices("indices", indices, self.codebook_size)
        if self.separate_codebook_per_head:
            flat = indices.reshape(-1, self.heads).T  # (heads, rows)
            codes = self._codebook.gather(flat).permute(1, 0, 2).reshape(*indices.shape[:-1], -1)
        else:
            codes = self.codebook[indices]
        if not self.channel_last or self.accept_image_fmap or self.accept_3d_fmap:
            codes = codes.movedim(-1, 1)
        return codes

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.get_codes_from_indices(indices))

    # ---- layouts ------------------------------------------------------------------------

    @property
    def _spatial_ndim(self) -> int:
        return 2 if self.accept_image_fmap else 3 if self.accept_3d_fmap else 0

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x in any accepted layout → (B, N, dim)."""
        if self._spatial_ndim:
            check_tensor("x", x, ndim=2 + self._spatial_ndim, finite=False)
            return x.flatten(2).transpose(1, 2)
        check_tensor("x", x, min_ndim=2, finite=False)
        if x.dim() == 2:  # one vector per batch row
            return x[:, None]
        if x.dim() != 3:
            raise ValueError(
                "x must be (B, N, dim), (B, dim) or, with accept_image_fmap / accept_3d_fmap, "
                f"(B, dim, H, W) / (B, dim, D, H, W); got {tuple(x.shape)}"
            )
        return x if self.channel_last else x.transpose(1, 2)

    def _from_tokens(self, tokens: torch.Tensor, x: torch.Tensor, features: bool) -> torch.Tensor:
        """(B, N, ...) → the layout of x; ``features``: the last axis holds features (moved to
        axis 1 in channel-first layouts), else it is an index tensor."""
        if self._spatial_ndim:
            out = tokens.unflatten(1, x.shape[2:])
            return out.movedim(-1, 1) if features else out
        if x.dim() == 2:
            return tokens[:, 0]
        if not self.channel_last and features:
            return tokens.transpose(1, 2)
        return tokens

    def _token_mask(self, mask, lens, x: torch.Tensor, tokens: torch.Tensor):
        """``mask`` (B, N) bool or ``lens`` (B,) → (B, N) bool (True = a real position), or None."""
        if mask is None and lens is None:
            return None
        if mask is not None and lens is not None:
            raise ValueError("pass mask or lens, not both")
        if self._spatial_ndim or x.dim() == 2:
            raise ValueError("mask and lens need sequences x (B, N, dim), not feature maps or single vectors")
        if lens is not None:
            return lens_to_mask(lens, tokens.shape[1])
        check_tensor("mask", mask, ndim=2, dtypes=(torch.bool,), finite=False)
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask must have shape (B, N) = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
        return mask

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, heads · c) → (codebooks, rows, c): a codebook per head takes its head's vectors
        (heads, B·N, c); a shared codebook takes them all, in vector-quantize-pytorch's (B, heads, N)
        order, so that its dead-code draws pick the same rows."""
        b, n = t.shape[:2]
        t = t.reshape(b, n, self.heads, -1)
        if self.separate_codebook_per_head:
            return t.permute(2, 0, 1, 3).reshape(self.heads, b * n, -1)
        return t.permute(0, 2, 1, 3).reshape(1, b * self.heads * n, -1)

    def _merge_heads(self, t: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """The inverse of ``_split_heads``: (codebooks, rows, c) → (B, N, heads · c)."""
        if self.separate_codebook_per_head:
            t = t.reshape(self.heads, b, n, -1).permute(1, 2, 0, 3)
        else:
            t = t.reshape(b, self.heads, n, -1).permute(0, 2, 1, 3)
        return t.reshape(b, n, -1)

    # ---- forward ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, indices=None, mask=None, lens=None, *, freeze_codebook: bool | None = None,
                ema_update_weight=None, accum_ema_update: bool = False, ema_update: bool | None = None, **options):
        if indices is not None:
            raise ValueError("indices (vector-quantize-pytorch's cross-entropy loss to given codes) is not supported "
                             "by lgvq.compat; leave it None")
        reject_unsupported(options, UNSUPPORTED_FORWARD_DEFAULTS, "VectorQuantize.forward")
        tokens = self._to_tokens(x)
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"x must have {self.dim} features (dim), got shape {tuple(x.shape)}")
        mask = self._token_mask(mask, lens, x, tokens)
        b, n = tokens.shape[:2]
        frozen = self.freeze_codebook if freeze_codebook is None else freeze_codebook
        z = self._split_heads(self.project_in(tokens))
        if self.use_cosine_sim:
            z = l2norm(z)
        rows_mask = None if mask is None else self._split_heads(mask[..., None].expand(-1, -1, self.heads))[..., 0]
        quantized, idx, loss = self._quantize(z, rows_mask, route_gradient=x.requires_grad, frozen=frozen,
                                              ema_update=self.ema_update if ema_update is None else ema_update,
                                              weight=ema_update_weight, accumulate=accum_ema_update)
        quantized = self.project_out(self._merge_heads(quantized, b, n))
        idx = self._merge_heads(idx[..., None], b, n)
        if self.heads == 1:
            idx = idx[..., 0]
        if mask is not None:  # padding comes back as zeros with index -1, as there
            quantized = quantized * mask[..., None].to(quantized.dtype)
            idx = idx.masked_fill(~(mask[..., None] if self.heads > 1 else mask), -1)
        return self._from_tokens(quantized, x, features=True), self._from_tokens(idx, x, features=False), loss

    def _quantize(self, z, mask, *, route_gradient: bool, frozen: bool, ema_update: bool, weight, accumulate: bool):
        """Vectors z (codebooks, rows, c) → quantized (same shape), indices (codebooks, rows), loss;
        the codebook statistics updated in training (rows where ``mask`` is False left out)."""
        book = self._codebook
        flat = z.detach().float()
        book.init_if_pending(flat, mask)
        embed = book.embed if self.learnable_codebook else book.embed.detach()
        idx = book.search(flat)
        codes = book.gather(idx, embed).to(z.dtype)  # gathered before the updates rewrite the codes
        if not self.training:
            return codes, idx, torch.zeros((), device=z.device)
        if not frozen:
            book.update(flat, idx, mask, ema_update=ema_update, weight=weight, accumulate=accumulate)
        quantized, loss = commit_and_pass_gradient(
            z, codes, route_gradient=route_gradient, rotation_trick=self.rotation_trick,
            weight=self.commitment_weight, detach_codes=frozen or not self.learnable_codebook, mask=mask,
        )
        return quantized, idx, loss

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, heads={self.heads}, "
            f"separate_codebook_per_head={self.separate_codebook_per_head}, decay={self.decay}, "
            f"use_cosine_sim={self.use_cosine_sim}, rotation_trick={self.rotation_trick}, "
            f"ema_update={self.ema_update}, learnable_codebook={self.learnable_codebook}, backend={self.backend!r}"
        )


def check_indices(name: str, indices, codebook_size: int, allow_dropped: bool = False) -> None:
    """Code indices: an integer tensor in [0, codebook_size) (or -1, a dropped residual stage,
    with ``allow_dropped``). Decoding is not a training step: the range check may sync."""
    check_tensor(name, indices, dtypes=(torch.int64, torch.int32, torch.int16, torch.uint8), finite=False)
    low = -1 if allow_dropped else 0
    if indices.numel() and bool(((indices < low) | (indices >= codebook_size)).any()):
        raise ValueError(f"{name} must lie in [{low}, {codebook_size}), got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")
