"""``ClusteredVectorQuantizer``: CVQ-VAE's online clustered codebook (Zheng & Vedaldi,
"Online Clustered Codebook", ICCV 2023).

After every training step each code moves towards an *anchor* taken from the current batch,
by a weight that is ~0 for codes in use and ~1 for codes nobody picks, so dead codes are
re-seeded where the features are:

    p_k ← γ·p_k + (1 − γ)·n_k / N           running usage probability (n_k assignments of N)
    α_k = exp(−p_k·K·10 / (1 − γ) − 1e-3)
    e_k ← (1 − α_k)·e_k + α_k·a_k

Anchors ``a_k``: ``"closest"`` the batch feature nearest to e_k; ``"random"`` uniformly drawn
batch features; ``"probrandom"`` a feature drawn with probability softmax_i(−dist(f_i, e_k)).
Optionally (``contrastive=True``) a loss pulls each code towards its nearest features and away
from the farther half of the batch.

Released code and what is followed here
---------------------------------------
Two releases matter: CVQ-VAE's ``quantise.VectorQuantiser`` (defaults ``distance='cos'``,
``anchor='probrandom'``, ``contras_loss=False``) and LG-VQ's copy of it,
``CVQVectorQuantiser`` (``distance='l2'``, ``anchor='probrandom'``, ``contras_loss=True``,
beta 0.25), which produced the paper's CVQ rows.

* Schedule: both re-anchor on every training forward, the first batch included, after the
  quantization (z_q and the loss use the codebook before the update). Their ``first_batch=True``
  ("offline" variant) re-anchors on the first batch only: ``first_batch_only=True`` here.
  ``embed_prob`` starts at zero and uses γ = 0.99 (``cvq_decay``).
* Loss: beta on the commitment term (taming ``legacy=False``); ``legacy=True`` is rejected.
* Metric: ``metric="l2"`` reproduces LG-VQ's ``distance='l2'`` exactly (search, anchors and the
  softmax all use −|f − e|²). The CVQ-VAE default ``distance='cos'`` is a hybrid: it *searches*
  by cosine but quantizes to, re-anchors with, and takes the loss on raw (unnormalised) codes
  and features. That hybrid is not reproduced: ``metric="cos"`` here is lgvq's spherical
  codebook (features and codes L2-normalised throughout, as the base VectorQuantizer).
* ``"closest"``: the release sorts the dense N×K similarity matrix along N; here
  ``nearest_code(codebook, features)`` (codes as queries, features as the "codebook") gives
  the same argmin with no N×K matrix and no sort.
* ``"probrandom"``: the release takes a softmax over the dense matrix and calls
  ``torch.multinomial`` per code; here the same distribution is sampled by Gumbel-max,
  argmax_i(−dist(f_i, e_k) + G_ik), over blocks of codes, so at most ``block_bytes`` of
  logits exist at once.
* ``"random"``: the release keeps a K-row feature pool that accumulates batches while a batch
  holds ≤ K features, and otherwise draws K rows with replacement. Here K rows are drawn from
  the current batch (without replacement when it has ≥ K rows); no pool across batches.
* Contrastive loss (LG-VQ's ``contras_loss=True``): per code, logits = [mean of its
  max(1, N // K) highest similarities, its N // 2 lowest similarities] / 0.07, cross-entropy
  towards the first. The release sorts the dense matrix; here each block of codes takes top-k
  of its block and is recomputed in backward (activation checkpointing), so memory stays
  bounded by the block.
* Distributed: the release does not synchronise (each rank re-anchors from its own batch and
  the codebooks drift apart). Here usage counts are all-reduced, anchors are computed from all
  ranks' features, and rank 0's anchors are broadcast, so random draws stay consistent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lgvq.checks import check_between, check_choice
from lgvq.ops import nearest_code, vector_quantize
from lgvq.ops.nearest import DEFAULT_BLOCK_BYTES, check_codebook_inputs
from lgvq.quantize.distributed import broadcast_, gather_rows
from lgvq.quantize.kmeans import sample_rows
from lgvq.quantize.vector_quantizer import VectorQuantizer

ANCHORS = ("closest", "random", "probrandom")
#: Temperature of the contrastive logits in the released code.
CONTRASTIVE_TEMPERATURE = 0.07


def anchor_weights(embed_prob: torch.Tensor, decay: float) -> torch.Tensor:
    """α_k = exp(−p_k·K·10/(1 − γ) − 1e-3): ≈0.999 for an unused code, ≈0 for a used one."""
    num_codes = embed_prob.shape[0]
    return torch.exp(-embed_prob * num_codes * 10.0 / (1.0 - decay) - 1e-3)


def _prepare_features(features: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 features (unit vectors for "cos") and the per-feature term of the logits."""
    features = features.float()
    if metric == "cos":
        features = F.normalize(features, dim=-1)
        return features, torch.zeros(features.shape[0], device=features.device)
    return features, -features.pow(2).sum(1)


def _negated_distances(codes: torch.Tensor, features: torch.Tensor, feature_term: torch.Tensor, metric: str):
    """(b, N) logits −dist(f_i, e_k) up to a per-code constant: 2 f·e − |f|² for "l2"
    (−|e|² dropped), f̂·ê for "cos" (−1 dropped). Every use below — a softmax over features,
    a code's highest / lowest features, a cross-entropy along a code's row — is invariant to
    a per-code constant, in value and in gradient."""
    codes = codes.float()
    if metric == "cos":
        return torch.addmm(feature_term, F.normalize(codes, dim=-1), features.t())
    return torch.addmm(feature_term, codes, features.t(), alpha=2.0)


def _codes_per_block(num_features: int, block_bytes: int, tensors_per_block: int) -> int:
    return max(1, block_bytes // (num_features * 4 * tensors_per_block))


@torch.no_grad()
def closest_features(codebook: torch.Tensor, features: torch.Tensor, metric: str = "l2", *, backend: str = "auto"):
    """Index (K,) of the feature nearest to each code: the column-wise argmin of the N×K distance
    matrix, found as a row-wise one with the roles of codes and features swapped."""
    idx, _ = nearest_code(codebook, features, metric, backend=backend)
    return idx


@torch.no_grad()
def softmax_sampled_features(
    codebook: torch.Tensor,
    features: torch.Tensor,
    metric: str = "l2",
    *,
    generator: torch.Generator | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """For each code k, the index (K,) of a feature drawn with probability softmax_i(−dist(f_i, e_k)).

    Gumbel-max: argmax_i(logit_ik − log E_ik) with E ~ Exp(1) is an exact sample of the
    softmax. Codes are processed in blocks holding at most ``block_bytes`` of logits and noise;
    the noise of a block is drawn in code-major order, so with a CPU ``generator`` the result
    does not depend on the block size. ``generator`` must live on the features' device.
    """
    check_codebook_inputs("features", features, codebook, metric)
    features, feature_term = _prepare_features(features, metric)
    picks = torch.empty(codebook.shape[0], dtype=torch.int64, device=features.device)
    step = _codes_per_block(features.shape[0], block_bytes, tensors_per_block=2)
    for start in range(0, codebook.shape[0], step):
        logits = _negated_distances(codebook[start : start + step], features, feature_term, metric)
        noise = torch.empty_like(logits).exponential_(generator=generator)
        picks[start : start + step] = (logits - noise.log()).argmax(dim=1)
    return picks


def _contrastive_block(codes, features, feature_term, metric: str, num_pos: int, num_neg: int) -> torch.Tensor:
    logits = _negated_distances(codes, features, feature_term, metric)
    positive = logits.topk(num_pos, dim=1).values.mean(dim=1, keepdim=True)
    negatives = logits.topk(num_neg, dim=1, largest=False).values
    scores = torch.cat([positive, negatives], dim=1) / CONTRASTIVE_TEMPERATURE
    target = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
    return F.cross_entropy(scores, target, reduction="sum")


def clustered_contrastive_loss(
    codebook: torch.Tensor, features: torch.Tensor, metric: str = "l2", *, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> torch.Tensor:
    """The release's code-vs-features contrastive loss (mean over codes), gradient to the codebook only.

    For code k: positive = mean of its max(1, N // K) highest similarities to the features,
    negatives = its N // 2 lowest; cross-entropy at temperature 0.07 towards the positive.
    Each block of codes is recomputed in backward, so the N×K similarities never coexist.
    """
    check_codebook_inputs("features", features, codebook, metric)
    features, feature_term = _prepare_features(features.detach(), metric)
    n, k = features.shape[0], codebook.shape[0]
    num_pos, num_neg = max(1, n // k), n // 2
    step = _codes_per_block(n, block_bytes, tensors_per_block=3)  # logits, top-k values and indices
    total = codebook.new_zeros((), dtype=torch.float32)
    for start in range(0, k, step):
        total = total + checkpoint(
            _contrastive_block, codebook[start : start + step], features, feature_term, metric, num_pos, num_neg,
            use_reentrant=False,
        )
    return total / k


class ClusteredVectorQuantizer(VectorQuantizer):
    """VectorQuantizer with CVQ-VAE's online re-anchoring of under-used codes (see module docs).

    Args:
        n_e, e_dim, beta: as VectorQuantizer (beta weighs the commitment term).
        anchor: ``"closest"`` | ``"random"`` | ``"probrandom"`` (the release's default).
        cvq_decay: γ of the running usage probability ``embed_prob``.
        first_batch_only: re-anchor on the first training batch only (the release's
            ``first_batch=True``, its "offline" variant).
        contrastive: add the release's code-vs-features contrastive loss (LG-VQ enables it).
        **kwargs: VectorQuantizer's keyword options (metric, kmeans_init, dead_code_threshold,
            track_usage, usage_window, sane_index_shape, backend). ``ema`` and ``legacy`` are not
            supported: the loss is always ``legacy=False``'s (beta on the commitment term).
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        *,
        anchor: str = "probrandom",
        cvq_decay: float = 0.99,
        first_batch_only: bool = False,
        contrastive: bool = False,
        **kwargs,
    ):
        if kwargs.get("ema"):
            raise ValueError(
                "ClusteredVectorQuantizer does not support ema=True: the EMA would overwrite re-anchored codes"
            )
        if kwargs.get("legacy"):
            raise ValueError(
                "ClusteredVectorQuantizer uses the CVQ release's loss (beta on the commitment term); "
                "legacy=True is not supported"
            )
        if first_batch_only and not kwargs.setdefault("track_usage", True):
            raise ValueError("first_batch_only=True counts steps with the usage statistic: it needs track_usage=True")
        kwargs.pop("legacy", None)
        super().__init__(n_e, e_dim, beta, legacy=False, **kwargs)
        check_choice("anchor", anchor, ANCHORS)
        check_between("cvq_decay", cvq_decay, 0.0, 1.0)
        self.anchor, self.cvq_decay = anchor, cvq_decay
        self.first_batch_only, self.contrastive = first_batch_only, contrastive
        self.register_buffer("embed_prob", torch.zeros(n_e))  # the release's name, so its checkpoints load
        self._anchored = False  # host copy of ``step > 0`` for first_batch_only, read without a sync

    def _rewrites_codebook(self) -> bool:
        return True  # re-anchoring moves codes after every training step

    def _quantize_flat(self, flat: torch.Tensor):
        codebook = self._codebook_for_step()
        z_q, idx, loss = vector_quantize(flat, codebook, self.beta, self.metric, backend=self.backend)
        if self.training and self.contrastive:
            loss = loss + clustered_contrastive_loss(codebook, flat, self.metric)
        return z_q, idx, loss

    def _training_updates(self, flat: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor | None) -> None:
        super()._training_updates(flat, counts, sums)
        self.embed_prob.mul_(self.cvq_decay).add_(counts / counts.sum(), alpha=1 - self.cvq_decay)
        if self.first_batch_only and self._anchored:
            return
        self._anchored = True
        anchors = self._anchors(gather_rows(flat)).float()
        broadcast_(anchors)  # rank 0's draws for everyone: the codebooks stay identical
        alpha = anchor_weights(self.embed_prob, self.cvq_decay)[:, None]
        weight = self.embedding.weight.detach().float()
        # a NaN/Inf anchor moves nothing, decided on the device (no sync): one bad row cannot poison a code
        finite = torch.isfinite(anchors).all(dim=1, keepdim=True)
        self._set_codebook(torch.where(finite, weight * (1 - alpha) + anchors * alpha, weight))

    def _refresh_host_state(self) -> None:
        super()._refresh_host_state()
        # only first_batch_only reads it, and it keeps the step counter (track_usage)
        self._anchored = self.first_batch_only and bool(self.step > 0)

    def _anchors(self, features: torch.Tensor) -> torch.Tensor:
        """One batch feature per code, chosen by ``self.anchor``: (K, d)."""
        codebook = self.embedding.weight.detach()
        if self.anchor == "closest":
            return features[closest_features(codebook, features, self.metric, backend=self.backend)]
        if self.anchor == "probrandom":
            return features[softmax_sampled_features(codebook, features, self.metric)]
        return sample_rows(features, self.n_e)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, anchor={self.anchor!r}, cvq_decay={self.cvq_decay}, "
            f"first_batch_only={self.first_batch_only}, contrastive={self.contrastive}"
        )

