"""Semantic alignment: global semantic alignment (Lgsa) and masked text prediction (Lmtp)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.guidance.masked_decoder import decode_at
from lgvq.guidance.visual_tokens import redraw_linear_bias
from lgvq.text import TokenizedText

# Lgsa adds this to the softmax denominator, as the released code does.
GSA_EPS = 1e-6
# The release's Lmtp decoder LayerNorm eps, and what its loss adds to the masked count.
RELEASE_NORM_EPS = 1e-12
RELEASE_COUNT_EPS = 5e-6


def global_semantic_alignment_loss(
    global_tokens: torch.Tensor, sentences: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Lgsa: −log(exp(ĝ_i·ŝ_i/τ) / (Σ_j exp(ĝ_i·ŝ_j/τ) + 1e-6)), averaged over the batch.

    The sentence features are targets: detached. The denominator is taken in log space,
    log(Σ_j exp(l_ij) + ε) = logaddexp(logsumexp_j l_ij, log ε), so that small temperatures
    (|l| > 88 overflows exp in fp32, i.e. τ below about 0.011) stay finite.
    """
    g = F.normalize(global_tokens.float(), dim=-1)
    s = F.normalize(sentences.detach().float(), dim=-1)
    logits = g @ s.t() / temperature
    log_eps = torch.tensor(math.log(GSA_EPS), device=logits.device)
    log_denominator = torch.logaddexp(torch.logsumexp(logits, dim=1), log_eps)
    return (log_denominator - logits.diagonal()).mean()


def draw_mask_ratio(generator: torch.Generator | None = None, mean: float = 0.5, std: float = 0.1,
                    low: float = 0.1, high: float = 0.3) -> torch.Tensor:
    """r ~ TruncatedNormal(0.5, 0.1) restricted to [0.1, 0.3], as released (inverse-CDF draw).

    A 0-dim CPU tensor: the training step uses it without reading it into Python (a
    ``float()`` would be a graph break under torch.compile). The normal's CDF and inverse
    CDF are written out (torch.distributions validates its arguments with host reads).
    """
    def cdf(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + torch.erf((x - mean) / (std * math.sqrt(2))))

    lo, hi = cdf(torch.tensor(low)), cdf(torch.tensor(high))
    u = torch.rand((), generator=generator)
    ratio = mean + std * math.sqrt(2) * torch.erfinv(2 * (lo + u * (hi - lo)) - 1)
    return ratio.clamp(low, high)


def sample_mask_ratio(generator: torch.Generator | None = None, mean: float = 0.5, std: float = 0.1,
                      low: float = 0.1, high: float = 0.3) -> float:
    """``draw_mask_ratio`` as a Python float."""
    return float(draw_mask_ratio(generator, mean, std, low, high))


def sample_word_mask(tokens: TokenizedText, ratio, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask each non-special word with probability ``ratio`` (a float or a 0-dim CPU tensor;
    start/end/padding never). The draws are made on the CPU (``generator``'s device) and
    copied without a stream sync."""
    mask = torch.rand(tokens.ids.shape, generator=generator) < ratio
    return mask.to(tokens.ids.device, non_blocking=True) & ~tokens.special_mask


def mask_k_words(tokens: TokenizedText, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask exactly min(k, #words) random non-special words of every caption (recall@1 eval)."""
    scores = torch.rand(tokens.ids.shape, generator=generator).to(tokens.ids.device)
    scores = scores.masked_fill(tokens.special_mask, -1.0)
    words = (~tokens.special_mask).sum(dim=1, keepdim=True)
    order = scores.argsort(dim=1, descending=True).argsort(dim=1)  # rank of every position
    return (order < torch.clamp(words, max=k)) & ~tokens.special_mask


class MaskedTextPredictor(nn.Module):
    """Predict masked words from the (partly masked) caption and the visual tokens.

    Masked positions take a learned per-position mask vector; padding is zeroed. A 2-layer
    post-LN transformer decoder (self-attention over text, cross-attention to all visual
    tokens, ReLU FFN of width Dt, dropout 0.1) gives H; the head scores
    ``LN(GELU(Linear(H))) @ Eᵀ + bias`` against the frozen word-embedding matrix E.

    The ``lgvq`` flavour masks padding out of the self-attention (``tgt_key_padding_mask``) and
    is ``nn.TransformerDecoder`` as torch builds it (LayerNorm eps 1e-5, dropout on the
    attention weights too, torch's initialisation). ``release=True`` is the release's decoder:
    padding is attended (its (B, 1, 1) mask never masks), LayerNorm eps 1e-12, dropout only
    after each sub-layer and inside the FFN, weights drawn with std d^-0.5, and the loss
    divides by (number masked + 5e-6).
    """

    def __init__(self, text_dim: int, max_length: int, vocab_size: int, *, layers: int = 2, heads: int = 1,
                 dropout: float = 0.1, label_smoothing: float = 0.1, release: bool = False):
        super().__init__()
        self.mask_vectors = nn.Parameter(torch.randn(max_length, text_dim) * 0.01)
        layer = nn.TransformerDecoderLayer(
            text_dim, heads, dim_feedforward=text_dim, dropout=dropout, batch_first=True, norm_first=False,
            layer_norm_eps=RELEASE_NORM_EPS if release else 1e-5,
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head_proj = nn.Linear(text_dim, text_dim)
        self.head_norm = nn.LayerNorm(text_dim)
        self.vocab_bias = nn.Parameter(torch.zeros(vocab_size))
        self.label_smoothing = label_smoothing
        self.release = release
        if release:
            self._make_like_release()

    def _make_like_release(self) -> None:
        """No dropout on attention weights; the release's std d^-0.5 for the q/k/v/output and
        FFN weights, nn.Linear's default biases (the release builds them as nn.Linear), drawn
        afresh for every layer."""
        for layer in self.decoder.layers:
            for attention in (layer.self_attn, layer.multihead_attn):
                attention.dropout = 0.0
                d = attention.embed_dim
                nn.init.normal_(attention.in_proj_weight, std=d ** -0.5)
                nn.init.uniform_(attention.in_proj_bias, -(d ** -0.5), d ** -0.5)
                nn.init.normal_(attention.out_proj.weight, std=d ** -0.5)
                redraw_linear_bias(attention.out_proj)
            nn.init.normal_(layer.linear1.weight, std=layer.linear1.out_features ** -0.5)
            nn.init.normal_(layer.linear2.weight, std=layer.linear2.out_features ** -0.5)
            redraw_linear_bias(layer.linear1)
            redraw_linear_bias(layer.linear2)

    def logits(self, words: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor,
               visual_tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (num_masked, V) at the masked positions, in row-major order.

        words (B, L, Dt), mask/padding (B, L) bool, visual_tokens (B, M+1, Dt). Only masked
        positions are scored: the V-wide head is most of the cost, and only they are trained.
        """
        return self._head(self._masked_hidden(words, mask, padding, visual_tokens), embeddings)

    def _input(self, words, mask) -> torch.Tensor:
        return torch.where(mask[..., None], self.mask_vectors.to(words.dtype)[None], words)

    def _hidden(self, words, mask, padding, visual_tokens) -> torch.Tensor:
        """The decoder's output H (B, L, Dt) for the masked caption."""
        x = self._input(words, mask).masked_fill(padding[..., None], 0.0)
        return self.decoder(x, visual_tokens, tgt_key_padding_mask=None if self.release else padding)

    def _masked_hidden(self, words, mask, padding, visual_tokens) -> torch.Tensor:
        """H at the masked positions (num_masked, Dt), row-major. Where selecting rows is free
        and padding is masked out of the self-attention (not the release's decoder), the
        decoder runs only where H is read (``decode_at``)."""
        if self.release or not _selection_is_free(mask):
            return self._hidden(words, mask, padding, visual_tokens)[mask]
        return decode_at(self.decoder, self._input(words, mask), ~padding, mask, visual_tokens)

    def _head(self, h: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        h = self.head_norm(F.gelu(self.head_proj(h)))
        return h @ embeddings.t().to(h.dtype) + self.vocab_bias

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy over the masked positions (0 when none is masked)."""
        if targets.numel() == 0:
            return logits.sum() * 0.0  # keeps the graph (and DDP's parameter set) intact
        total = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing, reduction="sum")
        return total / (targets.numel() + (RELEASE_COUNT_EPS if self.release else 0.0))

    def masked_loss(self, words: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor,
                    visual_tokens: torch.Tensor, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``loss(logits(...), ids[mask])``: the training step's form, sync-free where it matters.

        The V-wide head is most of Lmtp's cost, and only the masked positions (about a tenth
        of B·L) are trained. Selecting them (``h[mask]``) has a data-dependent size: free on
        the CPU, but a device→host sync on an accelerator and a graph break under
        torch.compile. There every position is scored and the per-position cross-entropy is
        averaged over the masked ones, which gives the same value (0 when none is masked).
        """
        if _selection_is_free(mask):
            return self.loss(self.logits(words, mask, padding, visual_tokens, embeddings), ids[mask])
        logits = self._head(self._hidden(words, mask, padding, visual_tokens), embeddings)
        per_position = F.cross_entropy(
            logits.flatten(0, 1).float(), ids.flatten(), label_smoothing=self.label_smoothing, reduction="none"
        )
        weights = mask.flatten().to(per_position.dtype)
        count = weights.sum() + RELEASE_COUNT_EPS if self.release else weights.sum().clamp_min(1.0)
        return (per_position * weights).sum() / count


def _selection_is_free(mask: torch.Tensor) -> bool:
    """Whether boolean-mask indexing costs neither a sync nor a graph break (eager, on the CPU)."""
    return mask.device.type == "cpu" and not torch.compiler.is_compiling()
