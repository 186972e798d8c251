"""``IndexPropagationQuantize``: the face of Open-MAGVIT2's IBQ quantizer on lgvq's softmax ops.

    from lgvq.compat import IndexPropagationQuantize   # instead of: from src.IBQ.modules.vqvae.quantize import ...
    quantize = IndexPropagationQuantize(16384, 256, beta=0.25, use_entropy_loss=True)
    z_q, (quant_loss, sample_entropy, avg_entropy, entropy_loss), (_, _, indices) = quantize(z)  # z (B, 256, H, W)

Math (Open-MAGVIT2's, SEED-Voken's IBQ). For a row z and the codebook E (K, d): logits
``l = z·Eᵀ``, ``soft = softmax(l)``, ``idx = argmax l`` and ``z_q = (hard − sg(soft) + soft)·E``:
the value of ``E[idx]`` with the gradient of ``soft·E`` to z and E plus the hard path's to
``E[idx]``. The loss is

    quant_loss = mean((z_q − z)²) + mean((sg(E[idx]) − z)²) + β·mean((E[idx] − sg(z))²)

and, with ``use_entropy_loss``, MAGVIT-2's entropy terms of ``softmax(l / entropy_temperature)``:
the mean per-sample entropy, the entropy of the batch's average probabilities, and
``entropy_loss = sample_minimization_weight·sample − batch_maximization_weight·avg``. The peer
computes all of them in training and evaluation alike, and so does this.

What changes is the work: the peer holds 6–9 (N, K) tensors; here ``index_backprop_quantize``
and ``codebook_softmax_sums`` stream code tiles (O(N + K) memory, ``lgvq.ops.softmax``). The
state dict is the peer's (``embedding.weight``, plus ``used`` with ``remap``), and the codebook
starts as the peer's does (``nn.Embedding``'s N(0, 1)).

Where this differs from the peer:
* ``cosine_similarity`` is accepted and ignored, as by the peer (its forward never reads it);
  so are ``forward``'s ``temp`` and ``return_logits``.
* ``remap``: the peer cannot be built with it (its constructor prints ``self.n_embed``, an
  attribute it never sets) and its entropy loss would reshape the used codes' logits to
  ``n_e`` columns. Here it works as the peer's forward intends: the softmax runs over the
  codes in ``used`` only, indices are positions in ``used`` shaped (N, 1), and the entropy is
  over the used codes. ``used`` must not repeat a code.
* Ties: the peer takes the argmax of the probabilities, this the argmax of the logits (lowest
  index on ties); they differ only where rounding makes two probabilities equal whose logits
  are not.
* ``global_entropy=True`` (lgvq's option, off by default as the peer is per device): under a
  process group the entropies are those of the global batch (``lgvq.quantize.entropy``).

lgvq's modern face ``quantize(z)`` on channels-last (..., d) returns a ``QuantizerOutput`` whose
``loss`` is the IBQ training objective of Open-MAGVIT2's loss module:
``quant_loss + entropy_loss_weight·entropy_loss`` (its IBQ configs use 0.05).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.ops.softmax import codebook_softmax_sums, index_backprop_quantize
from lgvq.quantize.entropy import batch_entropies
from lgvq.quantize.vector_quantizer import QuantizerOutput, VectorQuantizer


class IBQLosses(NamedTuple):
    quant_loss: torch.Tensor
    sample_entropy: torch.Tensor | None  # None without use_entropy_loss
    avg_entropy: torch.Tensor | None
    entropy_loss: torch.Tensor | None


class IndexPropagationQuantize(VectorQuantizer):
    """Open-MAGVIT2's ``IndexPropagationQuantize`` (see the module docs).

    Args (the peer's): n_e (K), e_dim (d), beta, use_entropy_loss, remap / unknown_index
    (taming's index remapping, as ``VectorQuantizer``), cosine_similarity (ignored, as by the
    peer), entropy_temperature, sample_minimization_weight, batch_maximization_weight.
    lgvq's keyword options: entropy_loss_weight (the modern face's weight of the entropy loss),
    global_entropy, track_usage / usage_window (the running codebook-usage statistic), backend.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        use_entropy_loss: bool = False,
        remap=None,
        unknown_index="random",
        cosine_similarity: bool = False,
        entropy_temperature: float = 0.01,
        sample_minimization_weight: float = 1.0,
        batch_maximization_weight: float = 1.0,
        *,
        entropy_loss_weight: float = 0.05,
        global_entropy: bool = False,
        track_usage: bool = False,
        usage_window: int = 100,
        backend: str = "auto",
    ):
        super().__init__(
            n_e, e_dim, beta, remap=remap, unknown_index=unknown_index, legacy=False,
            track_usage=track_usage, usage_window=usage_window, backend=backend,
        )
        check_positive("entropy_temperature", entropy_temperature)
        check_positive("entropy_loss_weight", entropy_loss_weight, allow_zero=True)
        if remap is not None and len(self.used.unique()) != len(self.used):
            raise ValueError(f"remap file {remap} lists a code twice; IBQ's softmax runs over distinct used codes")
        nn.init.normal_(self.embedding.weight)  # nn.Embedding's own init: the peer keeps it
        self.use_entropy_loss = use_entropy_loss
        self.cosine_similarity = cosine_similarity
        self.entropy_temperature = entropy_temperature
        self.sample_minimization_weight = sample_minimization_weight
        self.batch_maximization_weight = batch_maximization_weight
        self.entropy_loss_weight = entropy_loss_weight
        self.global_entropy = global_entropy

    def forward(self, z: torch.Tensor, temp=None, return_logits: bool = False):
        """Open-MAGVIT2 face: z (B, e_dim, *spatial) → ``(z_q, loss, (None, None, indices))``.

        ``loss`` is ``quant_loss``, or ``(quant_loss, sample_entropy, avg_entropy, entropy_loss)``
        with ``use_entropy_loss``; indices are flat (B·H·W,), or positions in ``used`` shaped
        (N, 1) with ``remap``. ``temp`` and ``return_logits`` are ignored, as by the peer.
        """
        check_tensor("z", z, min_ndim=3, finite=False)
        if z.shape[1] != self.e_dim:
            raise ValueError(f"z must be channels-first (B, C={self.e_dim}, H, W); got shape {tuple(z.shape)}")
        out = super().quantize(z.movedim(1, -1))  # its loss is the IBQLosses of _quantize_flat
        indices = out.indices.reshape(-1)
        if self.remap is not None:
            indices = self.remap_to_used(indices).reshape(-1, 1)
        losses = tuple(out.loss) if self.use_entropy_loss else out.loss.quant_loss
        return out.z_q.movedim(-1, 1), losses, (None, None, indices)

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Modern face: z (..., d) → QuantizerOutput with loss = quant_loss + entropy_loss_weight·entropy_loss."""
        out = super().quantize(z)
        losses = out.loss
        loss = losses.quant_loss
        if self.use_entropy_loss:
            loss = loss + self.entropy_loss_weight * losses.entropy_loss
        return dataclasses.replace(out, loss=loss)

    def _active_codes(self) -> torch.Tensor:
        """The codes the softmax runs over: all of them, or the ``used`` ones with remap."""
        codebook = self.embedding.weight
        return codebook if self.remap is None else codebook[self.used]

    def _quantize_flat(self, flat: torch.Tensor):
        codes = self._active_codes()
        z_q, idx = index_backprop_quantize(flat, codes, metric="dot", backend=self.backend)
        chosen = F.embedding(idx, codes)
        flat32, chosen32 = flat.float(), chosen.float()
        quant_loss = (
            F.mse_loss(z_q.float(), flat32)
            + F.mse_loss(chosen32.detach(), flat32)
            + self.beta * F.mse_loss(chosen32, flat32.detach())
        )
        if self.remap is not None:
            idx = self.used[idx]  # lgvq's indices are codebook rows; forward maps them back to positions
        if not self.use_entropy_loss:
            return z_q, idx, IBQLosses(quant_loss, None, None, None)
        entropy_sum, sums = codebook_softmax_sums(
            flat, codes, metric="dot", temperature=self.entropy_temperature, backend=self.backend
        )
        sample, avg = batch_entropies(entropy_sum, sums, flat.shape[0], global_batch=self.global_entropy)
        entropy_loss = self.sample_minimization_weight * sample - self.batch_maximization_weight * avg
        return z_q, idx, IBQLosses(quant_loss, sample, avg, entropy_loss)

    def extra_repr(self) -> str:
        return (
            f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, use_entropy_loss={self.use_entropy_loss}, "
            f"entropy_temperature={self.entropy_temperature}, global_entropy={self.global_entropy}, "
            f"backend={self.backend!r}"
        )
