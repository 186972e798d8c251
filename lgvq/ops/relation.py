"""Relationship alignment (LG-VQ's Lras): ``relation_alignment_loss``.

Each word picks its best-matching visual token (cosine similarity, argmax over M); the
projected codes Z at those positions, scaled by the similarity and normalised, should
relate to each other as the words do::

    Ŵ = W/|W|, T̂ = T/|T|;  S = Ŵ T̂ᵀ;  v, a = max/argmax_M S
    G[b, l] = Z[b, a[b, l]] · v[b, l];  Ĝ = G/|G| · m;  P = Ĝ Ĝᵀ
    Q = (Ŵ · m)(Ŵ · m)ᵀ (detached);  loss = mean over B·L·L of (P − Q)²

Only ``codes`` receives a gradient: the argmax is not differentiated, and v reaches Ĝ only
through its sign because Ĝ is normalised after the scaling. Every norm is clamped like
``F.normalize`` (x / max(|x|, EPS)), so zero rows — padded words, v = 0 — give zero
vectors instead of NaN.

The torch reference below is the oracle and the CPU path (run on one thread: its kernels are
too small for OpenMP regions to pay, see ``lgvq.ops.cpu``); the Triton path
(``lgvq.kernels.relation``) never materialises the (B, L, M) similarities or the gathered
(B, L, Dt) codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lgvq.checks import FLOAT_DTYPES, check_same_device, check_tensor
from lgvq.ops.backend import resolve_backend
from lgvq.ops.cpu import single_threaded

#: Norm clamp of every normalisation, F.normalize's default.
EPS = 1e-12
MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + FLOAT_DTYPES


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 accumulation, fp64 when an input is fp64 (gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def relation_alignment_reference(
    words: torch.Tensor, word_mask: torch.Tensor, tokens: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """Vectorised torch Lras (no loop over words, no (B, L, M, Dt) intermediate); see the module doc."""
    dtype = _compute_dtype(words, tokens, codes)
    mask = word_mask.to(dtype).unsqueeze(-1)  # (B, L, 1)
    with torch.no_grad():  # the matching and Q are constants of the loss
        w_hat = F.normalize(words.to(dtype), dim=-1, eps=EPS)
        t_hat = F.normalize(tokens.to(dtype), dim=-1, eps=EPS)
        v, a = torch.bmm(w_hat, t_hat.transpose(1, 2)).max(dim=-1)  # (B, L) each
        w_masked = w_hat * mask
        q = torch.bmm(w_masked, w_masked.transpose(1, 2))
    z = codes.gather(1, a.unsqueeze(-1).expand(-1, -1, codes.shape[-1])).to(dtype)  # (B, L, Dt)
    g_hat = F.normalize(z * v.unsqueeze(-1), dim=-1, eps=EPS) * mask
    p = torch.bmm(g_hat, g_hat.transpose(1, 2))
    return (p - q).pow(2).mean()


class RelationAlignment(torch.autograd.Function):
    """Lras through the Triton kernels; the gradient goes to ``codes`` only."""

    @staticmethod
    def forward(ctx, words, mask, tokens, codes):
        from lgvq.kernels.relation import relation_forward  # imports triton: only once it is asked for

        loss, state = relation_forward(words, mask, tokens, codes, EPS)
        ctx.save_for_backward(codes, *state)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        from lgvq.kernels.relation import RelationState, relation_backward

        codes, *state = ctx.saved_tensors
        return None, None, None, relation_backward(codes, RelationState(*state), grad_loss)


def _check_inputs(words, word_mask, tokens, codes) -> None:
    check_tensor("words", words, ndim=3)
    check_tensor("word_mask", word_mask, ndim=2, dtypes=MASK_DTYPES)
    check_tensor("tokens", tokens, ndim=3)
    check_tensor("codes", codes, ndim=3)
    check_same_device(words=words, word_mask=word_mask, tokens=tokens, codes=codes)
    B, L, Dt = words.shape
    if word_mask.shape != (B, L):
        raise ValueError(f"word_mask must have shape (B, L) = {(B, L)} like words, got {tuple(word_mask.shape)}")
    if tokens.shape[0] != B or tokens.shape[2] != Dt:
        raise ValueError(
            f"tokens must have shape (B, M, Dt) with B = {B} and Dt = {Dt} as in words, got {tuple(tokens.shape)}"
        )
    if codes.shape != tokens.shape:
        raise ValueError(f"codes must have the shape of tokens {tuple(tokens.shape)}, got {tuple(codes.shape)}")
    if word_mask.dtype != torch.bool and not bool(((word_mask == 0) | (word_mask == 1)).all()):
        raise ValueError("word_mask must hold only 1 (word) and 0 (padding)")


def _triton_limitation(words, tokens, codes) -> Exception | None:
    """Why the Triton kernels cannot take these inputs, or None."""
    from lgvq.kernels.relation import MAX_WORDS
    if torch.float64 in (words.dtype, tokens.dtype, codes.dtype):
        return TypeError("float64 inputs are supported by backend='torch' only")
    if words.shape[1] > MAX_WORDS:
        return ValueError(
            f"words has {words.shape[1]} words per caption; backend='triton' takes at most {MAX_WORDS}"
        )
    return None


def relation_alignment_loss(
    words: torch.Tensor,
    word_mask: torch.Tensor,
    tokens: torch.Tensor,
    codes: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """LG-VQ relationship-alignment loss Lras.

    Args:
        words: (B, L, Dt) frozen text features W.
        word_mask: (B, L) 1 for a word, 0 for padding; bool, integer or float.
        tokens: (B, M, Dt) per-position visual tokens (T[:, 1:], without the global token).
        codes: (B, M, Dt) projected quantized codes Z; the only input that gets a gradient.
        backend: ``"auto"`` | ``"triton"`` | ``"torch"``. ``auto`` falls back to torch for
            inputs the kernels do not take (float64, more than 128 words).

    Returns:
        The scalar loss, fp32 (fp64 when an input is fp64, torch backend only).
    """
    _check_inputs(words, word_mask, tokens, codes)
    chosen = resolve_backend(backend, words, word_mask, tokens, codes)
    if chosen == "triton":
        limitation = _triton_limitation(words, tokens, codes)
        if limitation is not None:
            if backend == "triton":
                raise limitation
            chosen = "torch"
    if chosen == "torch":
        if codes.device.type == "cpu":  # small kernels: one thread (lgvq.ops.cpu)
            return single_threaded(relation_alignment_reference, words, word_mask, tokens, codes)
        return relation_alignment_reference(words, word_mask, tokens, codes)
    mask = word_mask.to(torch.float32).contiguous()
    # words and tokens are detached so that, as on the torch path, they never require grad here.
    return RelationAlignment.apply(words.detach(), mask, tokens.detach(), codes)
