"""Test-only oracle: the LG-VQ release's text supervision, re-expressed module by module.

The authors' release (github 623851394/LG-VQ-language-guided-codebook-learning, a taming
fork) computes its three language losses in ``taming/models/LG_vqgan.py`` (``VQModel``:
``maskPrediction``, ``crossEntropy``, ``global_infor_sup``, ``wrsrelation_sup``,
``text_supervise``) with the modules of ``taming/clip/model.py`` (``quantTransformer``),
``taming/modules/transformer/decoder.py`` (``Decoder``) and ``maskTransformer.py``. This file
rebuilds exactly those computations with the release's module layout and attribute names, so
that its ``state_dict`` keys are the release checkpoint's (``mskTransformer.encoder.*``,
``mskTransformer.decoder.layers.*``, ``mask_learned_parameter``, ``wrsr_fc.*``,
``mlm_layer.*``). Two things are parameters here that the release hard-codes: the code grid
(16) and the text width (512, CLIP ViT-B/32's); the frozen CLIP is replaced by given features
and a given word-embedding matrix. Nothing in lgvq imports this file.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------- taming/clip/model.py


class ClipLayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed in fp32."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)  # sequence-first, no dropout
        self.ln_1 = ClipLayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = ClipLayerNorm(d_model)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class quantTransformer(nn.Module):  # noqa: N801 (the release's name)
    def __init__(self, grid: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid ** 2 + 1, width))
        self.ln_pre = ClipLayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = ClipLayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.initialize_parameters()

    def forward(self, x, return_all: bool = False):
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid², width)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_post(x) if return_all else self.ln_post(x[:, 0, :])
        return x @ self.proj

    def initialize_parameters(self):
        nn.init.normal_(self.class_embedding, std=0.01)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.proj, std=0.01)
        proj_std = (self.transformer.width ** -0.5) * ((2 * self.transformer.layers) ** -0.5)
        attn_std = self.transformer.width ** -0.5
        fc_std = (2 * self.transformer.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


# --------------------------------------------------- taming/modules/transformer/decoder.py


class LayerNorm(nn.Module):
    """The decoder's own LayerNorm: biased variance, eps 1e-12, parameters gamma / beta."""

    def __init__(self, d_model, eps=1e-12):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d_model))
        self.beta = nn.Parameter(torch.zeros(d_model))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return self.gamma * ((x - mean) / torch.sqrt(var + self.eps)) + self.beta


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model, hidden, drop_prob=0.1):
        super().__init__()
        self.linear1 = nn.Linear(d_model, hidden)
        self.linear2 = nn.Linear(hidden, d_model)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=drop_prob)
        nn.init.normal_(self.linear1.weight, std=hidden ** -0.5)
        nn.init.normal_(self.linear2.weight, std=d_model ** -0.5)

    def forward(self, x):
        return self.linear2(self.dropout(self.relu(self.linear1(x))))


class ScaleDotProductAttention(nn.Module):
    def forward(self, q, k, v, mask=None):
        d_tensor = k.shape[-1]
        score = (q @ k.transpose(2, 3)) / math.sqrt(d_tensor)
        if mask is not None:
            score = score.masked_fill(mask.unsqueeze(1) == 0, -10000)
        return score.softmax(dim=-1) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.attention = ScaleDotProductAttention()
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_concat = nn.Linear(d_model, d_model)
        for linear in (self.w_q, self.w_k, self.w_v, self.w_concat):
            nn.init.normal_(linear.weight, std=d_model ** -0.5)

    def _split(self, t):
        b, length, d = t.shape
        return t.view(b, length, self.n_head, d // self.n_head).transpose(1, 2)

    def forward(self, q, k, v, mask=None):
        q, k, v = self._split(self.w_q(q)), self._split(self.w_k(k)), self._split(self.w_v(v))
        out = self.attention(q, k, v, mask=mask)
        b, _, length, _ = out.shape
        return self.w_concat(out.transpose(1, 2).contiguous().view(b, length, -1))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, ffn_hidden, n_head, drop_prob):
        super().__init__()
        self.self_attention = MultiHeadAttention(d_model, n_head)
        self.norm1 = LayerNorm(d_model)
        self.dropout1 = nn.Dropout(p=drop_prob)
        self.enc_dec_attention = MultiHeadAttention(d_model, n_head)
        self.norm2 = LayerNorm(d_model)
        self.dropout2 = nn.Dropout(p=drop_prob)
        self.ffn = PositionwiseFeedForward(d_model, ffn_hidden, drop_prob)
        self.norm3 = LayerNorm(d_model)
        self.dropout3 = nn.Dropout(p=drop_prob)

    def forward(self, dec, enc, mask):
        x = self.norm1(self.dropout1(self.self_attention(dec, dec, dec, mask=mask)) + dec)
        x = self.norm2(self.dropout2(self.enc_dec_attention(x, enc, enc)) + x)
        return self.norm3(self.dropout3(self.ffn(x)) + x)


class Decoder(nn.Module):
    def __init__(self, d_model, ffn_hidden, n_head, n_layers, drop_prob):
        super().__init__()
        self.layers = nn.ModuleList(
            [DecoderLayer(d_model, ffn_hidden, n_head, drop_prob) for _ in range(n_layers)]
        )

    def forward(self, trg, enc_src, mask):
        for layer in self.layers:
            trg = layer(trg, enc_src, mask)
        return trg


class maskTransformer(nn.Module):  # noqa: N801
    def __init__(self, grid, width, n_layers, n_head, d_model, ffn_hidden, drop_prob):
        super().__init__()
        self.encoder = quantTransformer(grid=grid, width=width, layers=n_layers, heads=n_head, output_dim=d_model)
        self.decoder = Decoder(d_model, ffn_hidden, n_head, n_layers, drop_prob)

    def forward(self, img, text, mask):
        enc_src = self.encoder(img, return_all=True)
        return self.decoder(text, enc_src, mask), enc_src


# ----------------------------------------------------------------- taming/models/LG_vqgan.py


class MlmLayer(nn.Module):
    def __init__(self, feat_emb_dim, word_emb_dim, vocab_size):
        super().__init__()
        self.fc = nn.Linear(feat_emb_dim, word_emb_dim)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(word_emb_dim)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x, word_embeddings):
        return self.ln(self.gelu(self.fc(x))) @ word_embeddings.transpose(0, 1) + self.bias


class wrsLayer(nn.Module):  # noqa: N801
    def __init__(self, quant_dim, text_dim):
        super().__init__()
        self.fc = nn.Linear(quant_dim, text_dim)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(text_dim)
        nn.init.normal_(self.fc.weight, std=0.01)

    def forward(self, x):
        return self.ln(self.gelu(self.fc(x)))


def label_smoothing_cross_entropy(x, target, smoothing=0.1):
    """The release's LabelSmoothingCrossEntropy: per-row loss, no reduction."""
    logprobs = F.log_softmax(x, dim=-1)
    nll = -logprobs.gather(dim=-1, index=target.long().unsqueeze(1)).squeeze(1)
    return (1.0 - smoothing) * nll + smoothing * -logprobs.mean(dim=-1)


class ReleaseTextSupervision(nn.Module):
    """The text-supervision half of the release's VQModel, with its attribute names."""

    def __init__(self, embed_dim, word_embeddings, *, grid, text_len, layers=2, heads=1, drop_prob=0.1):
        super().__init__()
        self.dim = embed_dim
        self.text_dim = word_embeddings.shape[1]
        self.mskTransformer = maskTransformer(grid, embed_dim, layers, heads, self.text_dim, self.text_dim, drop_prob)
        self.mask_learned_parameter = nn.Parameter(torch.randn(1, text_len, self.text_dim))
        nn.init.normal_(self.mask_learned_parameter, std=0.01)
        self.wrsr_fc = wrsLayer(embed_dim, self.text_dim)
        self.mlm_layer = MlmLayer(self.text_dim, self.text_dim, word_embeddings.shape[0])
        self.word_embeddings = word_embeddings.detach()  # the frozen CLIP token embedding

    def global_infor_sup(self, quant, last_text_feature):
        g = quant / torch.norm(quant, dim=-1).unsqueeze(-1)
        s = (last_text_feature / torch.norm(last_text_feature, dim=-1).unsqueeze(-1)).detach()
        pos = (g * s).sum(-1)
        neg = torch.exp(g @ s.T).sum(-1)
        return -torch.log(torch.exp(pos) / (neg + 0.000001))

    def maskPrediction(self, quant, all_text_features, text_mask, mask_padding, ge_indices):  # noqa: N802
        masked = torch.where(text_mask.unsqueeze(-1).repeat(1, 1, self.text_dim) == 0,
                             self.mask_learned_parameter, all_text_features)
        masked = masked * mask_padding.unsqueeze(-1)
        count = mask_padding.unsqueeze(1)
        count = count @ count.permute(0, 2, 1)  # (B, 1, 1): the real-token count, never 0
        output, vision_token = self.mskTransformer(quant, masked, count)
        mask_pre = ((~text_mask.bool()) * mask_padding.bool()).float()
        return self.crossEntropy(ge_indices, output, mask_pre), vision_token[:, 0], vision_token[:, 1:]

    def crossEntropy(self, gt_indices, x, mask):  # noqa: N802
        logits = self.mlm_layer(x, self.word_embeddings)
        bsz, seq_len = gt_indices.shape
        loss = label_smoothing_cross_entropy(logits.reshape(bsz * seq_len, -1), gt_indices.reshape(-1))
        loss = loss.reshape(bsz, seq_len)
        return (loss * mask).sum() / (mask.sum() + 0.000005)

    def wrsrelation_sup(self, vision_token, quant, all_text_features, mask_padding):
        x = quant.reshape(quant.shape[0], quant.shape[1], -1).permute(0, 2, 1)
        quant_ = self.wrsr_fc(x)
        words = all_text_features / torch.norm(all_text_features, p=2, dim=-1).unsqueeze(-1)
        tokens = vision_token / torch.norm(vision_token, p=2, dim=-1).unsqueeze(-1)
        value, indices = (words @ tokens.permute(0, 2, 1)).max(-1)
        batch = torch.arange(tokens.shape[0]).view(-1, 1)
        text_to_quant = torch.zeros(tokens.shape[0], words.shape[1], self.text_dim)
        for i in range(words.shape[1]):  # the release gathers one word position at a time
            text_to_quant[batch, i, :] = quant_[batch, indices[:, i].reshape(-1, 1)]
        words = words * mask_padding.unsqueeze(-1)
        q = words @ words.permute(0, 2, 1)
        text_to_quant = text_to_quant * value.unsqueeze(-1)
        text_to_quant = text_to_quant / torch.norm(text_to_quant, p=2, dim=-1).unsqueeze(-1)
        text_to_quant = text_to_quant * mask_padding.unsqueeze(-1)
        p = text_to_quant @ text_to_quant.permute(0, 2, 1)
        return F.mse_loss(p, q.detach())

    def text_supervise(self, quant, all_text_features, last_text_feature, text_mask, mask_padding, text_tokens):
        msk, global_token, vision_token = self.maskPrediction(
            quant, all_text_features, text_mask, mask_padding, text_tokens)
        nce = self.global_infor_sup(global_token, last_text_feature).mean()
        wrs = self.wrsrelation_sup(vision_token, quant, all_text_features, mask_padding)
        return nce, msk.mean(), wrs


def release_text_inputs(ids, attention_mask, word_mask):
    """(text_mask, mask_padding) as the release's get_text_input builds them from CLIP's ids:
    text_mask 1 at kept tokens, 0 at masked words and at the tokenizer's padding (its tokenize
    writes both); mask_padding 1 where ``ids != 0``, so an id-0 token inside a caption is
    padding too."""
    return (~word_mask).int() * attention_mask.int(), (ids != 0).float()
