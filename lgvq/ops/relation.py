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
(B, L, Dt) codes. It is two registered ops (``lgvq::relation_triton`` and its backward,
joined by ``register_autograd``) with fake implementations, so it compiles without a graph
break.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgvq.checks import FLOAT_DTYPES, check_finite_if_strict, check_same_device, check_tensor, is_strict
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


@torch.library.custom_op("lgvq::relation_triton", mutates_args=())
def relation_triton(
    words: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lras through the Triton kernels: (loss, *RelationState), the state being what the backward reads."""
    from lgvq.kernels.relation import relation_forward  # imports triton: only once it is asked for

    loss, state = relation_forward(words, mask, tokens, codes, EPS)
    return (loss, *state)


@relation_triton.register_fake
def _relation_triton_fake(words, mask, tokens, codes):
    from lgvq.kernels.relation import WORD_BLOCK  # imports triton: only once the Triton path is traced

    B, L = words.shape[:2]
    f32 = dict(dtype=torch.float32)
    return (
        words.new_empty((), **f32), words.new_empty((B, L), dtype=torch.int32), words.new_empty((B, L), **f32),
        words.new_empty((B, -(-L // WORD_BLOCK), L), **f32), words.new_empty((B, L, L), **f32),
    )


@torch.library.custom_op("lgvq::relation_triton_backward", mutates_args=())
def relation_triton_backward(
    codes: torch.Tensor, idx: torch.Tensor, gscale: torch.Tensor, r: torch.Tensor, diff: torch.Tensor,
    grad_loss: torch.Tensor,
) -> torch.Tensor:
    """dLras/dcodes (B, M, Dt), contiguous in codes' dtype."""
    from lgvq.kernels.relation import RelationState, relation_backward

    return relation_backward(codes, RelationState(idx, gscale, r, diff), grad_loss)


@relation_triton_backward.register_fake
def _relation_triton_backward_fake(codes, idx, gscale, r, diff, grad_loss):
    return torch.empty_like(codes, memory_format=torch.contiguous_format)


def _save_for_relation_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[3], *output[1:])


def _relation_backward(ctx, grad_loss, *_grad_state):
    """The gradient goes to ``codes`` only."""
    codes, *state = ctx.saved_tensors
    return None, None, None, relation_triton_backward(codes, *state, grad_loss)


relation_triton.register_autograd(_relation_backward, setup_context=_save_for_relation_backward)


def _check_inputs(words, word_mask, tokens, codes) -> None:
    named = {"words": words, "word_mask": word_mask, "tokens": tokens, "codes": codes}
    check_tensor("words", words, ndim=3, finite=False)
    check_tensor("word_mask", word_mask, ndim=2, dtypes=MASK_DTYPES, finite=False)
    check_tensor("tokens", tokens, ndim=3, finite=False)
    check_tensor("codes", codes, ndim=3, finite=False)
    for name, t in named.items():
        check_finite_if_strict(name, t)
    check_same_device(**named)
    B, L, Dt = words.shape
    if word_mask.shape != (B, L):
        raise ValueError(f"word_mask must have shape (B, L) = {(B, L)} like words, got {tuple(word_mask.shape)}")
    if tokens.shape[0] != B or tokens.shape[2] != Dt:
        raise ValueError(
            f"tokens must have shape (B, M, Dt) with B = {B} and Dt = {Dt} as in words, got {tuple(tokens.shape)}"
        )
    if codes.shape != tokens.shape:
        raise ValueError(f"codes must have the shape of tokens {tuple(tokens.shape)}, got {tuple(codes.shape)}")
    if is_strict() and word_mask.dtype != torch.bool and not bool(((word_mask == 0) | (word_mask == 1)).all()):
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
    return relation_triton(words.detach(), mask, tokens.detach(), codes)[0]
