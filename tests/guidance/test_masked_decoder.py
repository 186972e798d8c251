"""``decode_at``: the masked-text decoder run only at the rows Lmtp reads, against the padded
``nn.TransformerDecoder`` it replaces (values and gradients, eval mode; dropout in train mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lgvq.guidance.masked_decoder import decode_at

LENGTHS = [5, 1, 7, 3]  # real tokens per caption, L = 7: one caption of a single token, one full


def _decoder(dim: int, heads: int, layers: int, dropout: float = 0.0) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True)
    return nn.TransformerDecoder(layer, layers)


def _inputs(dim: int, lengths=LENGTHS, width: int = 7, images: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    wanted = real & (torch.rand(real.shape, generator=g) < 0.5)
    wanted[0] = real[0]  # every real row of the first caption
    if len(lengths) > 2:
        wanted[2] = False  # none of the third's
    x = torch.randn(len(lengths), width, dim, generator=g)
    memory = torch.randn(len(lengths), images, dim, generator=g)
    return x, real, wanted, memory


def _padded_at(decoder, x, real, wanted, memory):
    return decoder(x.masked_fill(~real[..., None], 0.0), memory, tgt_key_padding_mask=~real)[wanted]


@pytest.mark.parametrize("dim,heads,layers", [(12, 1, 2), (12, 2, 2), (6, 3, 1), (10, 2, 3)])
def test_matches_the_padded_decoder_at_the_wanted_rows(dim, heads, layers):
    """Values and the gradients to the input, the visual tokens and every parameter, for 1–3
    layers, 1–3 heads, d not a power of two, captions of 1 to L real tokens, a caption with
    every row wanted and one with none."""
    torch.manual_seed(1)
    decoder = _decoder(dim, heads, layers).eval()
    x, real, wanted, memory = _inputs(dim)
    upstream = torch.randn(int(wanted.sum()), dim)
    results = []
    for run in (decode_at, _padded_at):
        xg, mg = x.clone().requires_grad_(), memory.clone().requires_grad_()
        out = run(decoder, xg, real, wanted, mg)
        grads = torch.autograd.grad((out * upstream).sum(), [xg, mg, *decoder.parameters()])
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert grads[0][~real].abs().sum() == 0  # padding takes no gradient


def test_one_caption_and_nothing_wanted():
    """B = 1 gives the padded decoder's rows; with no row wanted the output is (0, Dt) and
    every parameter is still in the graph (DDP needs the same parameter set every step)."""
    torch.manual_seed(2)
    decoder = _decoder(8, 2, 2).eval()
    x, real, wanted, memory = _inputs(8, lengths=[4], width=6)
    torch.testing.assert_close(decode_at(decoder, x, real, wanted, memory), _padded_at(decoder, x, real, wanted, memory),
                               rtol=1e-5, atol=1e-5)
    out = decode_at(decoder, x, real, torch.zeros_like(wanted), memory)
    assert out.shape == (0, 8)
    grads = torch.autograd.grad(out.sum() * 0.0, list(decoder.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)


def test_train_mode_drops_attention_weights_and_activations():
    """In train mode the attention weights are dropped with the attention's own rate (the
    ``lgvq`` flavour's decoder drops them, as torch's does), and the sub-layer dropouts apply:
    with every rate 0 train mode equals eval mode, and each rate alone changes the output."""
    torch.manual_seed(3)
    decoder = _decoder(12, 2, 2)
    x, real, wanted, memory = _inputs(12)
    reference = decode_at(decoder.eval(), x, real, wanted, memory)
    decoder.train()
    torch.testing.assert_close(decode_at(decoder, x, real, wanted, memory), reference)
    attentions = [m for m in decoder.modules() if isinstance(m, nn.MultiheadAttention)]
    dropouts = [m for m in decoder.modules() if isinstance(m, nn.Dropout)]
    for attention in attentions:
        attention.dropout = 0.5
    assert not torch.allclose(decode_at(decoder, x, real, wanted, memory), reference)
    for attention in attentions:
        attention.dropout = 0.0
    for dropout in dropouts:
        dropout.p = 0.5
    assert not torch.allclose(decode_at(decoder, x, real, wanted, memory), reference)
