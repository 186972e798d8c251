"""``LFQ``: the face of Open-MAGVIT2's lookup-free quantizer, with the exact entropy over all 2^b codes.

    from lgvq.compat import LFQ        # instead of: from src.Open_MAGVIT2.modules.vqvae.lookup_free_quantize import LFQ
    quantizer = LFQ(dim=18, codebook_size=2**18)
    (quantized, entropy_aux_loss, indices), breakdown = quantizer(x, return_loss_breakdown=True)  # x (B, 18, H, W)

Math (Open-MAGVIT2's, after MAGVIT-2). The channels split into ``num_codebooks`` groups of
b = log2(codebook_size) values; each group x is quantised to its signs, ``q = sign(x)`` with 0 → −1,
and its index is ``Σ_j [x_j > 0]·2^j``. The codes are the 2^b sign vectors c_k (coordinate j is
+1 where bit j of k is set). In training (and with ``return_loss``) the entropy loss of the
logits ``2·x·c_k`` at temperature 0.01 over all 2^b codes, every group of every position one
row: ``sample_minimization_weight·(mean per-sample entropy) − batch_maximization_weight·(entropy
of the average probabilities)``; and the commitment loss ``mean((x − sg(q))²)`` over the
positions ``mask`` keeps. The output is straight-through: value q, gradient identity.

What changes is the work: the peer builds the (N, 2^b) logits and probabilities (it stores the
(2^b, b) codebook, too); here ``lgvq.ops.softmax.lfq_softmax_sums`` generates code tiles from
their index bits and streams them, so 2^18 codes need O(N + 2^b) memory (the peer: 1 MiB of fp32 logits per row, and as much
again per probability tensor). The entropy is always over all 2^b codes, as in the peer:
``token_factorization`` splits only the indices.

Arguments the peer accepts and ignores, and so does this: ``forward``'s ``inv_temperature``
(the entropy's temperature is fixed at 0.01), and ``mask`` for the entropy loss (it masks the
commitment loss only). The peer has no projections: ``dim`` must equal
``num_codebooks·log2(codebook_size)`` (the peer fails later otherwise; this raises at
construction). Its state dict is empty (every buffer non-persistent), and so is this one's
unless ``track_usage`` is on.

lgvq's options: ``global_entropy`` (under a process group, the entropies of the global batch,
``lgvq.quantize.entropy``), ``track_usage`` / ``usage_window``, and the modern face
``quantize(z)`` on channels-last (..., dim) returning a ``QuantizerOutput`` whose loss is the
Open-MAGVIT2 LFQ training objective ``commit_weight·commitment + entropy_loss_weight·entropy_aux_loss``
(its configs: 0.25 and 0.1).
"""

from __future__ import annotations

from collections import namedtuple
from math import log2

import torch
from torch import nn

from lgvq.checks import check_positive, check_tensor
from lgvq.ops.softmax import MAX_LFQ_BITS, lfq_softmax_sums
from lgvq.ops.stats import code_counts
from lgvq.quantize.distributed import all_reduce_sum_
from lgvq.quantize.entropy import batch_entropies
from lgvq.quantize.usage import mark_used_, recent_usage
from lgvq.quantize.vector_quantizer import QuantizerOutput, perplexity_from_counts

#: The peer's loss breakdown (``avg_probs`` is always 0 there, and here).
LossBreakdown = namedtuple("LossBreakdown", ["per_sample_entropy", "codebook_entropy", "commitment", "avg_probs"])
#: The peer's entropy temperature (its ``inv_temperature`` argument is not used).
ENTROPY_TEMPERATURE = 0.01


def _bit_weights(bits: int, device) -> torch.Tensor:
    return 2 ** torch.arange(bits, device=device, dtype=torch.long)


class LFQ(nn.Module):
    """Open-MAGVIT2's ``LFQ`` (see the module docs)."""

    def __init__(
        self,
        *,
        dim: int | None = None,
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        sample_minimization_weight: float = 1.0,
        batch_maximization_weight: float = 1.0,
        token_factorization: bool = False,
        factorized_bits=(9, 9),
        entropy_loss_weight: float = 0.1,
        commit_weight: float = 0.25,
        global_entropy: bool = False,
        track_usage: bool = False,
        usage_window: int = 100,
        backend: str = "auto",
    ):
        super().__init__()
        if codebook_size is None or isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
            raise TypeError(f"codebook_size must be an int power of 2, got {codebook_size!r}")
        if codebook_size < 2 or not log2(codebook_size).is_integer():
            raise ValueError(f"codebook_size must be a power of 2 (at least 2), got {codebook_size}")
        check_positive("num_codebooks", num_codebooks)
        bits = int(log2(codebook_size))
        if bits > MAX_LFQ_BITS:
            raise ValueError(f"codebook_size must be at most 2^{MAX_LFQ_BITS}, got 2^{bits}")
        dim = bits * num_codebooks if dim is None else dim
        if dim != bits * num_codebooks:
            raise ValueError(
                f"dim must equal num_codebooks·log2(codebook_size) = {bits * num_codebooks} "
                f"(Open-MAGVIT2's LFQ has no projections), got {dim}"
            )
        factorized_bits = tuple(factorized_bits)
        if token_factorization and (len(factorized_bits) != 2 or sum(factorized_bits) != bits):
            raise ValueError(f"factorized_bits must be two sizes summing to log2(codebook_size) = {bits}, got {factorized_bits}")
        for name, value in (("entropy_loss_weight", entropy_loss_weight), ("commit_weight", commit_weight)):
            check_positive(name, value, allow_zero=True)
        check_positive("usage_window", usage_window)
        self.dim, self.codebook_size, self.codebook_dim = dim, codebook_size, bits
        self.num_codebooks = num_codebooks
        self.sample_minimization_weight = sample_minimization_weight
        self.batch_maximization_weight = batch_maximization_weight
        self.token_factorization, self.factorized_bits = token_factorization, factorized_bits
        self.entropy_loss_weight, self.commit_weight = entropy_loss_weight, commit_weight
        self.global_entropy = global_entropy
        self.track_usage, self.usage_window = track_usage, usage_window
        self.backend = backend
        if track_usage:
            self.register_buffer("last_used", torch.full((codebook_size,), -1, dtype=torch.int64))
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    # ---- the peer's helpers ----------------------------------------------------------------

    @property
    def codebook(self) -> torch.Tensor:
        """All 2^b codes (2^b, b), built on request (the peer keeps it as a buffer)."""
        return self.indices_to_bits(torch.arange(self.codebook_size)).float() * 2 - 1

    def indices_to_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (...) → bool bits (..., b); bit j is ``(x >> j) & 1``."""
        return (x.unsqueeze(-1) & _bit_weights(self.codebook_dim, x.device)) != 0

    def bits_to_indices(self, bits: torch.Tensor) -> torch.Tensor:
        if bits.shape[-1] != self.codebook_dim:
            raise ValueError(f"bits must have last dimension {self.codebook_dim}, got shape {tuple(bits.shape)}")
        return (bits * _bit_weights(self.codebook_dim, bits.device)).sum(-1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Indices (..., num_codebooks) → codes (..., num_codebooks·b)."""
        return (self.indices_to_bits(x).float() * 2 - 1).flatten(-2)

    def get_codebook_entry(self, x: torch.Tensor, bhwc=None, order=None) -> torch.Tensor:
        """Codes of indices ``x``: with the peer's ``bhwc`` = (b, h, w, c), x (b, h·w) → (b, c, h, w);
        without it, x (...) → (..., b), lgvq's convention. With token factorisation, ``order``
        ("pre" or anything else, as in the peer) picks the first or the last ``factorized_bits``."""
        check_tensor("x", x, dtypes=(torch.int64, torch.int32), finite=False)
        bits = self.codebook_dim
        if self.token_factorization:
            bits = self.factorized_bits[0] if order == "pre" else self.factorized_bits[1]
        codes = ((x.long().unsqueeze(-1) & _bit_weights(bits, x.device)) != 0).float() * 2 - 1
        if bhwc is None:
            return codes
        b, h, w, c = bhwc
        return codes.reshape(b, h, w, c).permute(0, 3, 1, 2)

    # ---- the two call styles --------------------------------------------------------------

    def forward(self, x: torch.Tensor, inv_temperature: float = 100.0, return_loss_breakdown: bool = False,
                mask: torch.Tensor | None = None, return_loss: bool = True):
        """Open-MAGVIT2 face: x (B, dim, *spatial) → ``(quantized, entropy_aux_loss, indices)``,
        and the LossBreakdown with ``return_loss_breakdown``. Indices are flat (B·positions·groups,),
        or a (pre, post) pair with token factorisation. ``mask`` (B, positions) selects the
        positions of the commitment loss; ``inv_temperature`` is ignored, as by the peer."""
        check_tensor("x", x, min_ndim=2, finite=False)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must be channels-first (B, dim={self.dim}, ...), got shape {tuple(x.shape)}")
        groups = x.movedim(1, -1).reshape(x.shape[0], -1, self.num_codebooks, self.codebook_dim)
        if mask is not None:
            check_tensor("mask", mask, dtypes=(torch.bool,), finite=False)
            if tuple(mask.shape) != tuple(groups.shape[:2]):
                raise ValueError(f"mask must have shape {tuple(groups.shape[:2])} (B, positions), got {tuple(mask.shape)}")
        quantized, signs, entropies, commitment = self._quantize_groups(groups, mask, with_entropy=return_loss)
        sample, avg, aux = entropies
        if self.token_factorization:
            first = self.factorized_bits[0]
            indices = (self._indices(signs[..., :first]).flatten(), self._indices(signs[..., first:]).flatten())
        else:
            indices = self._indices(signs).flatten()
        quantized = quantized.reshape(x.shape[0], -1, self.dim).movedim(1, -1).reshape(x.shape)
        ret = (quantized, aux, indices)
        if not return_loss_breakdown:
            return ret
        return ret, LossBreakdown(sample, avg, commitment, torch.zeros((), device=x.device))

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Modern face: z (..., dim) → QuantizerOutput: indices (...) for one codebook, else
        (..., num_codebooks); loss ``commit_weight·commitment + entropy_loss_weight·entropy_aux_loss``
        in training, 0 in evaluation."""
        check_tensor("z", z, min_ndim=1, finite=False)
        if z.shape[-1] != self.dim:
            raise ValueError(f"z must have last dimension dim={self.dim}, got shape {tuple(z.shape)}")
        groups = z.reshape(-1, 1, self.num_codebooks, self.codebook_dim)
        quantized, signs, (_, _, aux), commitment = self._quantize_groups(groups, None, with_entropy=True)
        indices = self._indices(signs)
        loss = self.commit_weight * commitment + self.entropy_loss_weight * aux
        index_shape = z.shape[:-1] if self.num_codebooks == 1 else (*z.shape[:-1], self.num_codebooks)
        with torch.no_grad():
            counts = code_counts(indices.flatten(), self.codebook_size)
            if self.training:  # ranks train in lockstep; evaluation may run on one rank only
                all_reduce_sum_(counts)
                if self.track_usage:
                    mark_used_(self.last_used, self.step, counts)
            usage = self.codebook_usage() if self.track_usage else None
        return QuantizerOutput(
            z_q=quantized.reshape(z.shape), indices=indices.reshape(index_shape), loss=loss,
            perplexity=perplexity_from_counts(counts), usage=usage,
        )

    def codebook_usage(self) -> torch.Tensor:
        """Fraction of the 2^b codes picked at least once in the last ``usage_window`` training steps."""
        if not self.track_usage:
            raise RuntimeError("codebook_usage() needs the quantizer built with track_usage=True")
        return recent_usage(self.last_used, self.step, self.usage_window)

    # ---- internals ----------------------------------------------------------------------

    def _quantize_groups(self, groups: torch.Tensor, mask: torch.Tensor | None, *, with_entropy: bool):
        """groups (B, n, c, b) → (straight-through q, signs, (sample, avg, aux), commitment), the
        losses as the peer gives them: entropy in training with ``with_entropy``, commitment in
        training, zeros otherwise."""
        one = torch.ones((), device=groups.device, dtype=groups.dtype)
        signs = torch.where(groups > 0, one, -one)
        zero = torch.zeros((), device=groups.device)
        entropies = (zero, zero, zero)
        commitment = zero
        if self.training and with_entropy:
            entropy_sum, sums = lfq_softmax_sums(groups, temperature=ENTROPY_TEMPERATURE, backend=self.backend)
            rows = groups.numel() // self.codebook_dim
            sample, avg = batch_entropies(entropy_sum, sums, rows, global_batch=self.global_entropy)
            entropies = (sample, avg, self.sample_minimization_weight * sample - self.batch_maximization_weight * avg)
        if self.training:
            squared = (groups - signs.detach()) ** 2
            commitment = (squared[mask] if mask is not None else squared).mean()
        return groups + (signs - groups).detach(), signs, entropies, commitment

    def _indices(self, signs: torch.Tensor) -> torch.Tensor:
        return ((signs > 0).long() * _bit_weights(signs.shape[-1], signs.device)).sum(-1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}, "
            f"token_factorization={self.token_factorization}, global_entropy={self.global_entropy}, "
            f"backend={self.backend!r}"
        )
