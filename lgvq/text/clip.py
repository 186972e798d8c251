"""CLIP's text tower: the encoder of the LG-VQ paper (ViT-B/32, Dt = 512)."""

from __future__ import annotations

import os

import torch

from lgvq.extras import needs_extra
from lgvq.text.base import DEFAULT_CACHE_SIZE, DEFAULT_MAX_LENGTH, TextEncoder, additive_attention_mask
from lgvq.text.local_files import (
    CLIP_TOKENIZER_FILES,
    load_frozen_weights,
    load_pretrained,
    require_local_model_dir,
    require_tokenizer_files,
)

# CLIP has no [MASK] token. Its pad token is usually <|endoftext|>, which must not stand in
# for a masked word: CLIP pools the sentence at the first end-of-text token (or the highest
# id), so a masked word would become the pooled position. "!" (id 0 in OpenAI's vocabulary)
# is what OpenAI's original `clip.tokenize` pads with and what LAION's configs use as pad.
DEFAULT_CLIP_MASK_TOKEN = "!"


def _plain_token_id(tokenizer, token: str) -> int:
    """The id of ``token``, which must be a vocabulary entry other than start/end/pad."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise ValueError(f"mask_token {token!r} is not in the CLIP tokenizer's vocabulary")
    token_id = vocab[token]
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if token_id in reserved:
        raise ValueError(
            f"mask_token {token!r} is a start/end/pad token of this CLIP tokenizer; pick a plain "
            "vocabulary entry so the end-of-text pooling position stays put"
        )
    return token_id


class CLIPTextEncoder(TextEncoder):
    """CLIP text encoder (``CLIPTextModelWithProjection`` + ``CLIPTokenizer``), local only.

    ``path`` may hold a full CLIP checkpoint (e.g. openai/clip-vit-base-patch32; the vision
    weights are ignored) or a text-only one. Words are the last hidden state after the final
    LayerNorm (Dt = hidden size, the width of the token embedding E); the sentence feature
    is CLIP's ``text_embeds``: the end-of-text state through the text projection
    (Ds = projection dim). ``mask_token`` replaces masked words, see DEFAULT_CLIP_MASK_TOKEN.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_length: int = DEFAULT_MAX_LENGTH,
        *,
        mask_token: str = DEFAULT_CLIP_MASK_TOKEN,
        cache: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        with needs_extra("text"):
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer  # slow import

        directory = require_local_model_dir(path)
        require_tokenizer_files(directory, CLIP_TOKENIZER_FILES)
        tokenizer = load_pretrained(CLIPTokenizer, directory, "CLIP tokenizer")
        model = load_frozen_weights(CLIPTextModelWithProjection, directory)
        super().__init__(
            model,
            tokenizer,
            max_length=max_length,
            mask_token_id=_plain_token_id(tokenizer, mask_token),
            sentence_dim=model.config.projection_dim,
            cache=cache,
            cache_size=cache_size,
        )

    def _run_model(
        self, ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = additive_attention_mask(attention_mask, self.word_embeddings.dtype, causal=True)
        out = self.model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.text_embeds
