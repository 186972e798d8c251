"""The masked-text decoder run only where its output is read: ``decode_at(decoder, x, real, wanted, memory)``.

``nn.TransformerDecoder`` (post-LN layers: self-attention, cross-attention to the visual tokens,
ReLU FFN) computes H at every position of the padded (B, L) caption batch. Lmtp reads H at the
masked positions alone, and with padding masked out of the self-attention (the ``lgvq`` flavour)
nothing at a padded position reaches a real one. So every layer but the last runs on the real
tokens alone (their outputs are the last layer's keys and values), and the last layer runs its
queries, cross-attention, FFN and norms on the wanted (masked) rows alone. The parameters are
the decoder's own, the function is the same to float rounding, and dropout keeps its law; its
random draws differ, since it draws one mask element per computed element.

On the shapes data (16 captions of 30 positions, about half of them real, about a tenth
masked) its matmuls read ~260 rows (the first layer) and ~45 (the last) instead of 480 per
layer; the cross-attention's keys and values (the visual tokens) cost the same
(``bench.training`` times Lmtp).

Layout. Rows stay packed, (rows, Dt) in row-major (B, L) order, for the per-token work
(projections, norms, FFN). Each attention runs batched per caption: its rows are scattered to
(B, W, Dt) by their rank within their caption (W: the most rows any caption has), the keys'
empty slots masked out, and the outputs gathered back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def decode_at(decoder: nn.TransformerDecoder, x: torch.Tensor, real: torch.Tensor, wanted: torch.Tensor,
              memory: torch.Tensor) -> torch.Tensor:
    """H at the ``wanted`` positions, (wanted.sum(), Dt) in row-major order, of
    ``decoder(x, memory, tgt_key_padding_mask=~real)``.

    x (B, L, Dt); real, wanted (B, L) bool with wanted ⊆ real; memory (B, M, Dt). The decoder's
    layers must be post-LN (``norm_first=False``) and batch-first, and it must have no final norm.
    """
    keys = Layout(real)
    rows = x[real]
    for i, layer in enumerate(decoder.layers):
        if i < len(decoder.layers) - 1:
            rows = _layer(layer, rows, keys, keys, memory)
        else:
            rows = _layer(layer, rows, Layout(wanted), keys, memory, rows[wanted[real]])
    return rows


class Layout:
    """Where the rows selected by ``selected`` (B, L) go in a per-caption batch (B, W, ·): row
    r (row-major) of caption ``batch[r]`` at slot ``slot[r]`` (its rank in the caption)."""

    def __init__(self, selected: torch.Tensor):
        counts = selected.sum(dim=1)
        self.batch = selected.nonzero()[:, 0]
        self.slot = selected.long().cumsum(dim=1)[selected] - 1
        # at least one slot, so that the attention runs (and every parameter stays in the graph)
        # when nothing is selected
        self.width = max(1, int(counts.max())) if selected.numel() else 1
        self.filled = torch.arange(self.width, device=selected.device) < counts[:, None]  # (B, W)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        out = rows.new_zeros(self.filled.shape[0], self.width, rows.shape[-1])
        return out.index_put((self.batch, self.slot), rows)

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        return padded[self.batch, self.slot]


def _layer(layer: nn.TransformerDecoderLayer, rows, queries: Layout, keys: Layout, memory, query_rows=None):
    """One post-LN decoder layer at the ``queries`` rows (``query_rows``, or all ``rows``), its
    self-attention reading ``rows`` (laid out by ``keys``)."""
    x = rows if query_rows is None else query_rows
    x = layer.norm1(x + layer.dropout1(_attend(layer.self_attn, x, queries, keys.scatter(rows), keys.filled)))
    x = layer.norm2(x + layer.dropout2(_attend(layer.multihead_attn, x, queries, memory, None)))
    ffn = layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))
    return layer.norm3(x + layer.dropout3(ffn))


def _attend(attention: nn.MultiheadAttention, rows, queries: Layout, keys: torch.Tensor, filled) -> torch.Tensor:
    """``attention`` of each query row over its caption's keys (B, S, Dt), ``filled`` (B, S)
    marking real keys (None: all), as ``nn.MultiheadAttention`` computes it (its dropout on the
    attention weights included); (rows, Dt)."""
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    heads = attention.num_heads
    q = _split_heads(queries.scatter(F.linear(rows, w_q, b_q)), heads)
    k, v = (_split_heads(F.linear(keys, w, b), heads) for w, b in ((w_k, b_k), (w_v, b_v)))
    mask = None if filled is None else filled[:, None, None, :]
    dropout = attention.dropout if attention.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return attention.out_proj(queries.gather(out.transpose(1, 2).flatten(2)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, Dt) → (B, heads, S, Dt / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)
