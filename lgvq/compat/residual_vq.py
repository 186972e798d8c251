"""``ResidualVQ`` and ``GroupedResidualVQ``: vector-quantize-pytorch's residual quantizers on
lgvq's ops.

    from lgvq.compat import ResidualVQ       # instead of: from vector_quantize_pytorch import ...
    rvq = ResidualVQ(dim=256, num_quantizers=8, codebook_size=1024)
    quantized, indices, commit_losses = rvq(x)      # x (B, N, 256); indices (B, N, 8); losses (8,)

Residual quantization (Zeghidour et al. 2021, Algorithm 1): with r_0 = x, stage l picks the
code e_l nearest to r_l (to r_l / |r_l| for cosine codes) and passes r_{l+1} = r_l − q_l on;
the output is Σ_l q_l. As in vector-quantize-pytorch each stage is a ``VectorQuantize`` of
``codebook_dim`` features (its codebook statistics, EMA, dead-code restarts, k-means
initialisation and loss), so the state dict has its keys (``layers.{l}._codebook.embed``, ...,
``project_in.*`` / ``project_out.*`` when ``codebook_dim`` differs from ``dim``), and in
training

    q_l = e_l in value, with the gradient reaching r_l rotated (rotation trick) or straight through
    commit_losses[l] = commitment_weight · mean((sg(e_l) − r_l)²)
    r_{l+1} = r_l − (f·q_l + (1 − f)·sg(q_l))      (f = quant_grad_frac, 0 by default)

What changes is the work: the L stages are one call of the fused ``lgvq.ops.residual_quantize``
(no (N, K) distance matrix at any stage; in training without ``quant_grad_frac`` its autograd
is the whole forward and backward, a mask included, otherwise it picks the codes and the face
applies the rules above stage by stage), and each stage's statistics are ``code_counts_and_sums`` (no (N, K)
one-hot).

Options: ``num_quantizers``, ``codebook_size`` (an int, or one per stage), ``codebook_dim``,
``shared_codebook``, ``quantize_dropout`` (training stops after a random stage l ≥
``quantize_dropout_cutoff_index``, rounded up to a multiple of ``quantize_dropout_multiple_of``;
later stages return index -1 and loss 0), ``quant_grad_frac``, ``accept_image_fmap``,
``channel_last``, and every ``VectorQuantize`` option the stages take (``decay``,
``commitment_weight``, ``kmeans_init``, ``threshold_ema_dead_code``, ``use_cosine_sim``,
``rotation_trick``, ...). ``forward`` takes ``mask`` (B, N), ``return_all_codes``,
``freeze_codebook`` and ``rand_quantize_dropout_fixed_seed``.

Differences: vector-quantize-pytorch 1.32's ``ResidualVQ`` fails on ``accept_image_fmap`` and
``channel_last=False`` inputs (it concatenates its indices along the feature axis); here they
work as in ``VectorQuantize`` (quantized in the input's layout, indices (B, H, W, L) or
(B, N, L)), and ``get_output_from_indices`` returns the forward's layout.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.compat.codebook import l2norm
from lgvq.compat.vector_quantize import VectorQuantize, check_indices, commit_and_pass_gradient, reject_unsupported
from lgvq.ops import nearest_code, residual_quantize, stage_inputs

#: vector-quantize-pytorch's ResidualVQ options this face does not implement, with their defaults.
UNSUPPORTED_RESIDUAL_DEFAULTS = {
    "diveq": False, "implicit_neural_codebook": False, "mlp_kwargs": {}, "beam_size": None,
    "eval_beam_size": None, "beam_score_quantizer_weights": None, "return_zeros_for_masked_padding": True,
}
UNSUPPORTED_RESIDUAL_FORWARD_DEFAULTS = {"indices": None, "sample_codebook_temp": None, "beam_size": None}
#: the range of vector-quantize-pytorch's quantizer-dropout seed (its get_maybe_sync_seed)
DROPOUT_SEED_RANGE = 10_000


def residual_indices(z: torch.Tensor, codebooks, metric: str, backend: str = "auto") -> torch.Tensor:
    """The codes (N, L) a residual search picks for z (N, d) through L codebooks (K_l, d):
    stage l searches r_l (r_0 = z; l2-normalised for ``metric="cos"``) and r_{l+1} = r_l − e_l.

    The one place the stages are searched: the fused ``residual_quantize`` (all stages in one
    pass, no (N, K) matrix) when the stages have one codebook size, else ``nearest_code`` stage
    by stage. Used where the face applies vqp's per-stage rules itself (evaluation,
    ``quant_grad_frac``), so only the indices are taken."""
    if len({book.shape[0] for book in codebooks}) == 1:
        with torch.no_grad():
            return residual_quantize(z, torch.stack(codebooks), metric=metric, backend=backend)[1]
    residual, chosen = z, []
    for book in codebooks:
        idx, _ = nearest_code(l2norm(residual) if metric == "cos" else residual, book, metric, backend=backend)
        chosen.append(idx)
        residual = residual - book[idx]
    return torch.stack(chosen, dim=-1)


def dropout_stages(seed: int, num_stages: int, cutoff: int, multiple_of: int) -> int:
    """How many stages a quantizer-dropout step keeps: the last kept stage is drawn uniformly
    from [cutoff, L) by Python's ``random.Random(seed)`` and rounded up to end a block of
    ``multiple_of`` stages (vector-quantize-pytorch's draw, so a seed keeps the same stages)."""
    last = random.Random(seed).randrange(cutoff, num_stages)
    if multiple_of != 1:
        last = -(-(last + 1) // multiple_of) * multiple_of - 1
    return min(last + 1, num_stages)


class ResidualVQ(nn.Module):
    """vector-quantize-pytorch's ``ResidualVQ`` (see the module docs).

    ``forward(x, mask=None, return_all_codes=False)`` → ``(quantized, indices, commit_losses)``
    (+ ``all_codes`` (L, B, ..., codebook_dim) with ``return_all_codes``).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_quantizers: int | None = None,
        codebook_size: int | tuple[int, ...],
        codebook_dim: int | None = None,
        shared_codebook: bool = False,
        heads: int = 1,
        quantize_dropout: bool = False,
        quantize_dropout_cutoff_index: int = 0,
        quantize_dropout_multiple_of: int = 1,
        accept_image_fmap: bool = False,
        channel_last: bool = True,
        quant_grad_frac: float = 0.0,
        backend: str = "auto",
        **vq_kwargs,
    ):
        super().__init__()
        unsupported = {k: vq_kwargs.pop(k) for k in list(vq_kwargs) if k in UNSUPPORTED_RESIDUAL_DEFAULTS}
        reject_unsupported(unsupported, UNSUPPORTED_RESIDUAL_DEFAULTS, "ResidualVQ")
        if heads != 1:
            raise ValueError(f"heads must be 1: residual VQ is not compatible with multi-headed codes, got {heads}")
        sizes = tuple(codebook_size) if isinstance(codebook_size, (tuple, list)) else None
        if num_quantizers is None and sizes is None:
            raise ValueError("num_quantizers is needed unless codebook_size gives one size per stage")
        num_quantizers = len(sizes) if num_quantizers is None else num_quantizers
        check_positive("num_quantizers", num_quantizers)
        sizes = sizes or (codebook_size,) * num_quantizers
        if len(sizes) != num_quantizers:
            raise ValueError(f"codebook_size must give num_quantizers={num_quantizers} sizes, got {len(sizes)}")
        if not 0 <= quantize_dropout_cutoff_index < num_quantizers:
            raise ValueError(f"quantize_dropout_cutoff_index must lie in [0, {num_quantizers}), "
                             f"got {quantize_dropout_cutoff_index}")
        check_positive("quantize_dropout_multiple_of", quantize_dropout_multiple_of)
        if not 0.0 <= quant_grad_frac <= 1.0:
            raise ValueError(f"quant_grad_frac must lie in [0, 1], got {quant_grad_frac}")
        if shared_codebook and len(set(sizes)) > 1:
            raise ValueError(f"shared_codebook=True needs one codebook_size for all stages, got {sizes}")
        if shared_codebook and vq_kwargs.get("threshold_ema_dead_code", 0) > 0:
            raise ValueError(
                "shared_codebook=True with threshold_ema_dead_code > 0 is not supported: vector-quantize-pytorch "
                "restarts dead codes of the shared codebook between stages, which one residual search over all "
                "stages cannot reproduce"
            )
        codebook_dim = dim if codebook_dim is None else codebook_dim
        check_positive("codebook_dim", codebook_dim)
        self.dim, self.codebook_dim, self.num_quantizers, self.codebook_sizes = dim, codebook_dim, num_quantizers, sizes
        self.shared_codebook = shared_codebook
        self.quantize_dropout = quantize_dropout and num_quantizers > 1
        self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
        self.quantize_dropout_multiple_of = quantize_dropout_multiple_of
        self.accept_image_fmap, self.channel_last = accept_image_fmap, channel_last
        self.quant_grad_frac, self.backend = quant_grad_frac, backend
        self.has_projections = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if self.has_projections else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if self.has_projections else nn.Identity()
        self.layers = nn.ModuleList(
            VectorQuantize(dim=codebook_dim, codebook_size=size, codebook_dim=codebook_dim, backend=backend, **vq_kwargs)
            for size in sizes
        )
        if self.layers[0].heads != 1:
            raise ValueError("heads must be 1: residual VQ is not compatible with multi-headed codes")
        if shared_codebook:
            for layer in self.layers[1:]:
                layer._codebook = self.layers[0]._codebook

    @property
    def codebook_size(self) -> int:
        return self.codebook_sizes[0]

    @property
    def codebooks(self):
        """The stages' codes: (L, K, codebook_dim), or a tuple of (K_l, codebook_dim) when sizes differ."""
        books = tuple(layer.codebook for layer in self.layers)
        return torch.stack(books) if len(set(self.codebook_sizes)) == 1 else books

    # ---- decoding -----------------------------------------------------------------------

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, ..., q) → codes (L, B, ..., codebook_dim); index -1 (a dropped stage or
        padding) and stages past q (coarse indices, with quantize_dropout) give zeros."""
        check_tensor("indices", indices, min_ndim=2, dtypes=(torch.int64, torch.int32, torch.int16), finite=False)
        given = indices.shape[-1]
        if given > self.num_quantizers or (given < self.num_quantizers and not self.quantize_dropout):
            raise ValueError(f"indices must have {self.num_quantizers} stages in the last axis (fewer only with "
                             f"quantize_dropout), got shape {tuple(indices.shape)}")
        for stage in range(given):
            check_indices(f"indices[..., {stage}]", indices[..., stage], self.codebook_sizes[stage], allow_dropped=True)
        codes = torch.zeros(self.num_quantizers, *indices.shape[:-1], self.codebook_dim,
                            device=indices.device, dtype=self.layers[0].codebook.dtype)
        for stage in range(given):
            idx = indices[..., stage].long()
            kept = idx >= 0
            codes[stage] = self.layers[stage].codebook[idx.clamp_min(0)] * kept[..., None]
        return codes

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Σ_l codes, projected out, in the forward's layout."""
        summed = self.project_out(self.get_codes_from_indices(indices).sum(0))
        if self.accept_image_fmap or not self.channel_last:
            summed = summed.movedim(-1, 1)
        return summed

    # ---- forward ------------------------------------------------------------------------

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.accept_image_fmap:
            check_tensor("x", x, ndim=4, finite=False)
            tokens = x.flatten(2).transpose(1, 2)
        else:
            check_tensor("x", x, ndim=3, finite=False)
            tokens = x if self.channel_last else x.transpose(1, 2)
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"x must have {self.dim} features (dim), got shape {tuple(x.shape)}")
        return tokens

    def _stages_this_step(self, seed: int | None, device: torch.device) -> int:
        if not (self.training and self.quantize_dropout):
            return self.num_quantizers
        if seed is None:
            seed = int(torch.randint(0, DROPOUT_SEED_RANGE, (), device=device))
        return dropout_stages(seed, self.num_quantizers, self.quantize_dropout_cutoff_index,
                              self.quantize_dropout_multiple_of)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, return_all_codes: bool = False,
                freeze_codebook: bool = False, rand_quantize_dropout_fixed_seed: int | None = None, **options):
        reject_unsupported(options, UNSUPPORTED_RESIDUAL_FORWARD_DEFAULTS, "ResidualVQ.forward")
        tokens = self._to_tokens(x)
        b, n = tokens.shape[:2]
        if mask is not None:
            if self.accept_image_fmap:
                raise ValueError("mask needs sequences x (B, N, dim), not feature maps")
            check_tensor("mask", mask, ndim=2, dtypes=(torch.bool,), finite=False)
            if mask.shape != (b, n):
                raise ValueError(f"mask must have shape (B, N) = {(b, n)}, got {tuple(mask.shape)}")
        z = self.project_in(tokens).reshape(b * n, self.codebook_dim)
        rows_mask = None if mask is None else mask.reshape(1, -1)
        stages = self._stages_this_step(rand_quantize_dropout_fixed_seed, x.device)
        layers = self.layers[:stages]
        self._kmeans_init_stages(layers, z.detach().float(), rows_mask)
        if self.training and self.quant_grad_frac == 0 and len(set(self.codebook_sizes)) == 1:
            quantized, idx, losses, stage_vectors = self._fused_stages(z, layers, mask, frozen=freeze_codebook)
        else:
            metric = layers[0]._codebook.metric
            idx = residual_indices(z.detach().float(), [layer.codebook.detach() for layer in layers], metric,
                                   self.backend)
            quantized, losses, stage_vectors = self._stage_outputs(z, idx, rows_mask, frozen=freeze_codebook)
        if self.training and not freeze_codebook:
            self._update_codebooks(layers, stage_vectors, idx, rows_mask)

        quantized = self.project_out(quantized.view(b, n, -1))
        indices = idx.view(b, n, stages)
        if mask is not None:  # padding comes back as zeros with index -1, as there
            quantized = quantized * mask[..., None].to(quantized.dtype)
            indices = indices.masked_fill(~mask[..., None], -1)
        dropped = self.num_quantizers - stages
        indices = torch.cat([indices, indices.new_full((b, n, dropped), -1)], dim=-1)
        losses = torch.cat([losses, losses.new_zeros(dropped)])
        if self.accept_image_fmap:
            quantized = quantized.transpose(1, 2).unflatten(2, x.shape[2:])
            indices = indices.unflatten(1, x.shape[2:])
        elif not self.channel_last:
            quantized = quantized.transpose(1, 2)
        out = (quantized, indices, losses)
        return (*out, self.get_codes_from_indices(indices)) if return_all_codes else out

    def _fused_stages(self, z: torch.Tensor, layers, mask, *, frozen: bool):
        """Training without ``quant_grad_frac``: all stages in the one differentiable op, whose
        value, losses and gradients are then vqp's (q_l, loss_l and r_{l+1} = r_l − sg q_l; padded
        rows give 0, count in no loss and get no gradient). Returns Σ q_l, indices (M, S), the
        weighted losses (S,) and the stages' inputs (lazily replayed from the indices, for the
        codebook updates, which leave the padded rows out)."""
        first = layers[0]
        learns = first.learnable_codebook and not frozen
        codebooks = torch.stack([layer.codebook if learns else layer.codebook.detach() for layer in layers])
        metric = first._codebook.metric
        quantized, idx, losses = residual_quantize(z, codebooks, metric=metric, rotation_trick=first.rotation_trick,
                                                   mask=None if mask is None else mask.reshape(-1),
                                                   backend=self.backend)
        vectors = stage_inputs(z.detach().float(), codebooks.detach(), idx, metric=metric)
        return quantized, idx, losses * first.commitment_weight, vectors

    def _stage_outputs(self, z: torch.Tensor, idx: torch.Tensor, mask, *, frozen: bool):
        """Σ_l q_l, the stages' losses (S,) and inputs for the chosen codes ``idx`` (M, S), stage by
        stage (see the module docs for q_l, the losses and r_l)."""
        residual, total, losses, inputs = z, 0, [], []
        for stage, layer in enumerate(self.layers[: idx.shape[1]]):
            vectors = l2norm(residual) if layer.use_cosine_sim else residual
            embed = layer.codebook if layer.learnable_codebook else layer.codebook.detach()
            codes = embed[idx[:, stage]].to(z.dtype)
            if self.training:
                quantized, loss = commit_and_pass_gradient(
                    vectors, codes, route_gradient=residual.requires_grad, rotation_trick=layer.rotation_trick,
                    weight=layer.commitment_weight, detach_codes=frozen or not layer.learnable_codebook,
                    mask=None if mask is None else mask[0],
                )
            else:
                quantized, loss = codes, torch.zeros((), device=z.device)
            if mask is not None:
                quantized = quantized * mask[0, :, None].to(quantized.dtype)
            passed = quantized.detach()
            if self.quant_grad_frac > 0:
                passed = self.quant_grad_frac * quantized + (1 - self.quant_grad_frac) * passed
            residual = residual - passed
            total = total + quantized
            losses.append(loss)
            inputs.append(vectors.detach().float())
        return total, torch.stack(losses), inputs

    def _update_codebooks(self, layers, stage_vectors, idx: torch.Tensor, mask) -> None:
        """Each stage's codebook step on its own inputs, in stage order (vqp's order of random
        draws). After the searches, which is exact: no stage's search read a codebook an earlier
        stage of this step changed (see docs/design.md). A shared codebook folds in every stage's
        statistics and moves once, after the last stage."""
        for stage, (layer, vectors) in enumerate(zip(layers, stage_vectors)):
            book = layer._codebook
            if not self.shared_codebook:
                book.update(vectors[None], idx[None, :, stage], mask, ema_update=layer.ema_update)
            elif layer.ema_update:
                book.track(*book.batch_statistics(vectors[None], idx[None, :, stage], mask))
        if self.shared_codebook and layers[0].ema_update:
            layers[0]._codebook.codes_from_averages()

    def _kmeans_init_stages(self, layers, z: torch.Tensor, mask) -> None:
        """k-means initialisation on the first batch, stage after stage: stage l's codebook is fit
        to the residuals the already initialised stages leave (one-off; searched stage by stage)."""
        if not any(layer._codebook._kmeans_pending for layer in layers):
            return
        residual = z
        for layer in layers:
            vectors = l2norm(residual) if layer.use_cosine_sim else residual
            layer._codebook.init_if_pending(vectors[None], mask)
            book = layer.codebook.detach()
            residual = residual - book[residual_indices(residual, [book], layer._codebook.metric, self.backend)[:, 0]]


class GroupedResidualVQ(nn.Module):
    """vector-quantize-pytorch's ``GroupedResidualVQ``: the features split into ``groups`` equal
    parts, each quantized by its own ``ResidualVQ`` (``rvqs.{g}``). Returns the quantized parts
    concatenated, indices (groups, B, ..., L) and losses (groups, L) (and with ``return_all_codes``
    a tuple of each group's codes)."""

    def __init__(self, *, dim: int, groups: int = 1, accept_image_fmap: bool = False, **kwargs):
        super().__init__()
        check_positive("groups", groups)
        if dim % groups:
            raise ValueError(f"dim must be a multiple of groups={groups}, got {dim}")
        self.dim, self.groups, self.accept_image_fmap = dim, groups, accept_image_fmap
        self.rvqs = nn.ModuleList(
            ResidualVQ(dim=dim // groups, accept_image_fmap=accept_image_fmap, **kwargs) for _ in range(groups)
        )
        self.split_dim = 1 if accept_image_fmap or not self.rvqs[0].channel_last else -1

    @property
    def codebooks(self) -> torch.Tensor:
        return torch.stack([rvq.codebooks for rvq in self.rvqs])

    def get_codes_from_indices(self, indices) -> torch.Tensor:
        return torch.stack([rvq.get_codes_from_indices(part) for rvq, part in zip(self.rvqs, indices)])

    def get_output_from_indices(self, indices) -> torch.Tensor:
        return torch.cat([rvq.get_output_from_indices(part) for rvq, part in zip(self.rvqs, indices)], dim=self.split_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, return_all_codes: bool = False,
                freeze_codebook: bool = False, **options):
        check_tensor("x", x, min_ndim=3, finite=False)
        if x.shape[self.split_dim] != self.dim:
            raise ValueError(f"x must have {self.dim} features (dim) in axis {self.split_dim}, got {tuple(x.shape)}")
        seed = None
        if self.training:  # vector-quantize-pytorch draws one seed for all groups every training step
            seed = torch.randint(0, DROPOUT_SEED_RANGE, (), device=x.device)
            seed = int(seed) if self.rvqs[0].quantize_dropout else None  # read back only when used
        outs = [
            rvq(part, mask, return_all_codes=return_all_codes, freeze_codebook=freeze_codebook,
                rand_quantize_dropout_fixed_seed=seed, **options)
            for rvq, part in zip(self.rvqs, x.chunk(self.groups, dim=self.split_dim))
        ]
        quantized, indices, losses, *codes = zip(*outs)
        out = (torch.cat(quantized, dim=self.split_dim), torch.stack(indices), torch.stack(losses))
        return (*out, codes[0]) if return_all_codes else out  # the groups' codes as a tuple, as there
