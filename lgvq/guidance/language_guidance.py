"""``LanguageGuidance``: LG-VQ's language-guided losses for any VQ model.

    guidance = LanguageGuidance(code_dim=256, grid_size=16, text_encoder=load_text_encoder())
    out = guidance(z_q, captions)          # z_q (B, C, h, w) from any quantizer
    loss = vq_loss + out.loss              # λ_gsa·Lgsa + λ_mtp·Lmtp + λ_ras·Lras

The frozen text encoder is used but not owned: it is kept out of ``state_dict`` (its
weights are the encoder's files, not training state) and follows ``.to()``.

Two flavours share one set of parameter names. ``flavour="release"`` reproduces the authors'
release (its padding rule and Lmtp padding behaviour, QuickGELU ViT, unbiased projection, decoder
LayerNorm eps and dropout placement, initialisation, contextual Lmtp input); ``"lgvq"`` (the default)
differs from it where the release leaks or is accidental. The README's "Release flavour"
section lists the differences and the reason for each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import (
    check_choice,
    check_count,
    check_finite_if_strict,
    check_instance,
    check_positive,
    check_same_device,
    check_tensor,
)
from lgvq.guidance.semantic import (
    MaskedTextPredictor,
    global_semantic_alignment_loss,
    mask_k_words,
    draw_mask_ratio,
    sample_word_mask,
)
from lgvq.guidance.visual_tokens import VisualTokenizer
from lgvq.ops.relation import relation_alignment_loss
from lgvq.text import EncodedText, TextEncoder, TokenizedText

MTP_INPUTS = ("leak_free", "contextual")
FLAVOURS = ("lgvq", "release")
# The release's (λ_gsa, λ_mtp, λ_ras) per dataset (its configs_text/*.yaml); it has no COCO config.
RELEASE_WEIGHTS = {
    "cub": (1e-3, 1e-3, 1e-3),
    "celeba": (1e-3, 1e-2, 1e-4),
    "textcaps": (1e-3, 1e-2, 1e-4),
}


@dataclass
class GuidanceOutput:
    loss: torch.Tensor  # weighted sum
    gsa: torch.Tensor
    mtp: torch.Tensor
    ras: torch.Tensor


def _grid_positions(grid_size) -> int:
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    check_positive("grid_size", min(h, w))
    return h * w


class LanguageGuidance(nn.Module):
    """Semantic alignment (Lgsa, Lmtp) and relationship alignment (Lras) on quantized codes.

    Args:
        code_dim: C, channels of z_q.
        grid_size: h (square) or (h, w) of the code grid.
        text_encoder: a frozen ``lgvq.text.TextEncoder``.
        weights: (λ_gsa, λ_mtp, λ_ras); the release's per dataset are ``RELEASE_WEIGHTS``
            (0.001 each for CUB, 0.001 / 0.01 / 0.0001 for CelebA-HQ and TextCaps).
        temperature: Lgsa softmax temperature (the release has none: 1.0).
        mtp_input: ``"leak_free"`` (the caption is re-encoded with the masked words replaced
            by the encoder's mask token) or ``"contextual"`` (the release: the unmasked
            caption's contextual features, which leak the masked words). None: the
            flavour's (leak_free for ``"lgvq"``, contextual for ``"release"``).
        flavour: ``"lgvq"`` (default) or ``"release"``, which matches the release's losses
            and gradients given the same weights, inputs and masks.
        layers, heads: depth and attention heads of both the visual-token ViT and the Lmtp
            decoder (the release's ``mask_transformer_layer`` / ``_head``; 2 and 1 in every
            released config). ``heads`` must divide ``code_dim`` and the text width.
        backend: backend of the fused Lras op.
    """

    def __init__(
        self,
        code_dim: int,
        grid_size,
        text_encoder: TextEncoder,
        *,
        weights: tuple[float, float, float] = (1e-3, 1e-3, 1e-3),
        temperature: float = 1.0,
        mtp_input: str | None = None,
        flavour: str = "lgvq",
        layers: int = 2,
        heads: int = 1,
        backend: str = "auto",
    ):
        super().__init__()
        check_positive("code_dim", code_dim)
        check_count("layers", layers)
        check_count("heads", heads)
        check_positive("temperature", temperature)
        check_choice("flavour", flavour, FLAVOURS)
        release = flavour == "release"
        if mtp_input is None:
            mtp_input = "contextual" if release else "leak_free"
        check_choice("mtp_input", mtp_input, MTP_INPUTS)
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be three non-negative numbers (gsa, mtp, ras), got {weights}")
        if not isinstance(text_encoder, TextEncoder):
            raise TypeError(f"text_encoder must be an lgvq.text.TextEncoder, got {type(text_encoder).__name__}")
        object.__setattr__(self, "text_encoder", text_encoder)  # used, not owned: not a submodule
        dim = text_encoder.dim
        for width, what in ((code_dim, "code_dim"), (dim, "the text encoder's width")):
            if width % heads:
                raise ValueError(f"heads must divide {what} ({width}), got {heads}")
        self.code_dim = code_dim
        self.weights = tuple(float(w) for w in weights)
        self.temperature = temperature
        self.mtp_input = mtp_input
        self.flavour = flavour
        self.backend = backend
        self.visual = VisualTokenizer(code_dim, _grid_positions(grid_size), dim, layers=layers, heads=heads,
                                      release=release)
        self.sentence_proj = (
            nn.Linear(dim, text_encoder.sentence_dim) if text_encoder.sentence_dim != dim else nn.Identity()
        )
        self.mtp = MaskedTextPredictor(dim, text_encoder.max_length, text_encoder.vocab_size, layers=layers,
                                       heads=heads, release=release)
        self.relation_head = nn.Sequential(nn.Linear(code_dim, dim), nn.GELU(), nn.LayerNorm(dim))
        if release:
            nn.init.normal_(self.relation_head[0].weight, std=0.01)  # the release's wrsLayer

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.text_encoder._apply(fn, recurse)
        return self

    # ---- inputs ------------------------------------------------------------------------

    def _flatten_codes(self, z_q: torch.Tensor, channels_last: bool, name: str = "z_q") -> torch.Tensor:
        check_tensor(name, z_q, min_ndim=3, finite=False)
        check_same_device(**{name: z_q, "the guidance's parameters": self.relation_head[0].weight})
        check_finite_if_strict(name, z_q)  # NaN named here, not as a derived tensor deep in Lras
        if z_q.dim() == 3:  # (B, hw, C) token sequence
            tokens = z_q
        else:
            tokens = (z_q if channels_last else z_q.movedim(1, -1)).flatten(1, -2)
        if tokens.shape[-1] != self.code_dim:
            layout = "(B, h, w, C)" if channels_last else "(B, C, h, w)"
            raise ValueError(
                f"{name} must be {layout} or (B, hw, C) with C={self.code_dim}, got shape {tuple(z_q.shape)}"
            )
        return tokens.to(self.relation_head[0].weight.dtype)  # e.g. float64 z_q meets the heads' float32

    def padding(self, tokens: TokenizedText) -> torch.Tensor:
        """(B, L) bool, True at padding. The release takes ``ids == 0`` (its real-token mask is
        ``ids != 0``), so with CLIP's tokenizer a "!" (id 0) inside a caption is padding there:
        zeroed, never predicted, left out of Lras. The default flavour takes the tokenizer's
        attention mask."""
        if self.flavour == "release":
            return tokens.ids == 0
        return tokens.attention_mask == 0

    def encode_text(self, captions) -> EncodedText:
        if isinstance(captions, EncodedText):
            return captions
        return self.text_encoder(captions)

    # ---- forward -----------------------------------------------------------------------

    def forward(
        self,
        z_q: torch.Tensor,
        captions,
        *,
        channels_last: bool = False,
        ras_codes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """Losses for quantized codes ``z_q`` and their captions (list of str or EncodedText).

        ``ras_codes`` (same layout as z_q) routes Lras into other tensors, e.g. the codebook
        entries ``codebook[indices]`` themselves (the release routes it into z_q).
        """
        codes = self._flatten_codes(z_q, channels_last)
        if ras_codes is not None and (not isinstance(ras_codes, torch.Tensor) or ras_codes.shape != z_q.shape):
            got = tuple(ras_codes.shape) if isinstance(ras_codes, torch.Tensor) else type(ras_codes).__name__
            raise ValueError(f"ras_codes must be None or have z_q's shape {tuple(z_q.shape)}, got {got}")
        check_instance("generator", generator, torch.Generator, "a torch.Generator", optional=True)
        text = self.encode_text(captions)
        if text.words.shape[0] != codes.shape[0]:
            raise ValueError(f"got {text.words.shape[0]} captions for a batch of {codes.shape[0]} code grids")
        tokens = self.visual(codes)

        gsa = global_semantic_alignment_loss(self.sentence_proj(tokens[:, 0]), text.sentence, self.temperature)
        mtp = self._masked_text_loss(text, tokens, generator)
        relation_codes = codes if ras_codes is None else self._flatten_codes(ras_codes, channels_last, "ras_codes")
        ras = self._relation_loss(text, tokens, relation_codes)
        w_gsa, w_mtp, w_ras = self.weights
        return GuidanceOutput(loss=w_gsa * gsa + w_mtp * mtp + w_ras * ras, gsa=gsa, mtp=mtp, ras=ras)

    def _masked_text_loss(self, text: EncodedText, visual_tokens, generator) -> torch.Tensor:
        padding = self.padding(text.tokens)
        # padding is special in the default flavour, so `& ~padding` only drops the release's id-0 words
        mask = sample_word_mask(text.tokens, draw_mask_ratio(generator), generator) & ~padding
        words = self._mtp_words(text, mask, leak_free=self.mtp_input == "leak_free")
        return self.mtp.masked_loss(
            words, mask, padding, visual_tokens, self.text_encoder.word_embeddings, text.tokens.ids
        )

    def predict_masked(self, text: EncodedText, mask: torch.Tensor, visual_tokens: torch.Tensor,
                       *, leak_free: bool = True) -> torch.Tensor:
        """Vocabulary logits (num_masked, V) at the ``mask``ed words, which are hidden."""
        padding = self.padding(text.tokens)
        words = self._mtp_words(text, mask, leak_free)
        return self.mtp.logits(words, mask, padding, visual_tokens, self.text_encoder.word_embeddings)

    def _mtp_words(self, text: EncodedText, mask: torch.Tensor, leak_free: bool) -> torch.Tensor:
        """The caption features the predictor reads: re-encoded with the masked words hidden
        (leak-free), or the unmasked caption's (the release's contextual input)."""
        return self.text_encoder.encode_masked(text.tokens, mask).words if leak_free else text.words

    def _relation_loss(self, text: EncodedText, visual_tokens, codes) -> torch.Tensor:
        projected = self.relation_head(codes)
        return relation_alignment_loss(
            text.words, ~self.padding(text.tokens), visual_tokens[:, 1:], projected, backend=self.backend
        )

    # ---- the paper's alignment metrics (Tables 3 and 4) -----------------------------------

    @torch.no_grad()
    def masked_word_recall(self, z_q, captions, num_masked: int = 1, *, channels_last: bool = False,
                           generator: torch.Generator | None = None) -> tuple[int, int]:
        """(correct, total) top-1 predictions of ``num_masked`` random words per caption, leak-free."""
        check_count("num_masked", num_masked)
        check_instance("generator", generator, torch.Generator, "a torch.Generator", optional=True)
        text = self.encode_text(captions)
        visual_tokens = self.visual(self._flatten_codes(z_q, channels_last))
        mask = mask_k_words(text.tokens, num_masked, generator)
        logits = self.predict_masked(text, mask, visual_tokens, leak_free=True)
        correct = logits.argmax(-1) == text.tokens.ids[mask]
        return int(correct.sum()), int(mask.sum())

    @torch.no_grad()
    def word_code_similarities(self, z_q, captions, *, channels_last: bool = False):
        """(word_sim, code_sim, pairs), each (B, L, L): cosine similarities of the words'
        features and of their matched codes (the projected code at each word's
        best-matching visual position), and the mask of pairs of distinct real words."""
        codes = self._flatten_codes(z_q, channels_last)
        text = self.encode_text(captions)
        visual_tokens = self.visual(codes)[:, 1:]
        words = F.normalize(text.words.float(), dim=-1)
        similarity = words @ F.normalize(visual_tokens.float(), dim=-1).transpose(1, 2)
        best = similarity.argmax(dim=-1)  # (B, L)
        projected = F.normalize(self.relation_head(codes).float(), dim=-1)
        matched = projected.gather(1, best[..., None].expand(-1, -1, projected.shape[-1]))
        real = ~text.tokens.special_mask  # words only: no start/end/padding tokens
        pairs = real[:, :, None] & real[:, None, :]
        pairs &= ~torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
        return words @ words.transpose(1, 2), matched @ matched.transpose(1, 2), pairs

    def word_code_similarity_mse(self, z_q, captions, *, channels_last: bool = False) -> tuple[float, int]:
        """(sum of squared errors, number of pairs) of (cos(w_i, w_j) − cos(z_a(i), z_a(j)))²
        over pairs of distinct real words per caption (the paper's Table 4 metric)."""
        word_sim, code_sim, pairs = self.word_code_similarities(z_q, captions, channels_last=channels_last)
        return float(((word_sim - code_sim) ** 2)[pairs].sum()), int(pairs.sum())
