"""Semantic alignment: global semantic alignment (Lgsa) and masked text prediction (Lmtp)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.text import TokenizedText

# Lgsa adds this to the softmax denominator, as the released code does.
GSA_EPS = 1e-6


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


def sample_mask_ratio(generator: torch.Generator | None = None, mean: float = 0.5, std: float = 0.1,
                      low: float = 0.1, high: float = 0.3) -> float:
    """r ~ TruncatedNormal(0.5, 0.1) restricted to [0.1, 0.3], as released (inverse-CDF draw)."""
    normal = torch.distributions.Normal(mean, std)
    lo, hi = normal.cdf(torch.tensor(low)), normal.cdf(torch.tensor(high))
    u = torch.rand((), generator=generator)
    return float(normal.icdf(lo + u * (hi - lo)).clamp(low, high))


def sample_word_mask(tokens: TokenizedText, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask each non-special word with probability ``ratio`` (start/end/padding never)."""
    draws = torch.rand(tokens.ids.shape, generator=generator).to(tokens.ids.device)
    return (draws < ratio) & ~tokens.special_mask


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
    post-LN transformer decoder (self-attention over text with a padding mask,
    cross-attention to all visual tokens, FFN width Dt, dropout 0.1) gives H; the head
    scores ``LN(GELU(Linear(H))) @ Eᵀ + bias`` against the frozen word-embedding matrix E.
    """

    def __init__(self, text_dim: int, max_length: int, vocab_size: int, *, layers: int = 2, heads: int = 1,
                 dropout: float = 0.1, label_smoothing: float = 0.1):
        super().__init__()
        self.mask_vectors = nn.Parameter(torch.randn(max_length, text_dim) * 0.01)
        layer = nn.TransformerDecoderLayer(
            text_dim, heads, dim_feedforward=text_dim, dropout=dropout, batch_first=True, norm_first=False,
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.head_proj = nn.Linear(text_dim, text_dim)
        self.head_norm = nn.LayerNorm(text_dim)
        self.vocab_bias = nn.Parameter(torch.zeros(vocab_size))
        self.label_smoothing = label_smoothing

    def logits(self, words: torch.Tensor, mask: torch.Tensor, padding: torch.Tensor,
               visual_tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (num_masked, V) at the masked positions, in row-major order.

        words (B, L, Dt), mask/padding (B, L) bool, visual_tokens (B, M+1, Dt). Only masked
        positions are scored: the V-wide head is most of the cost, and only they are trained.
        """
        x = torch.where(mask[..., None], self.mask_vectors.to(words.dtype)[None], words)
        x = x.masked_fill(padding[..., None], 0.0)
        h = self.decoder(x, visual_tokens, tgt_key_padding_mask=padding)[mask]
        h = self.head_norm(F.gelu(self.head_proj(h)))
        return h @ embeddings.t().to(h.dtype) + self.vocab_bias

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy over the masked positions (0 when none is masked)."""
        if targets.numel() == 0:
            return logits.sum() * 0.0  # keeps the graph (and DDP's parameter set) intact
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
