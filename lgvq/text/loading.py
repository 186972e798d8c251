"""Pick the right encoder class for a name or a local directory."""

from __future__ import annotations

import os

from lgvq.text.base import TextEncoder
from lgvq.text.bert import BertLikeEncoder
from lgvq.text.clip import CLIPTextEncoder
from lgvq.text.local_files import is_clip_dir, require_local_model_dir

DEFAULT_ENCODER_NAME = "minilm"


def load_text_encoder(name_or_path: str | os.PathLike | None = None, **kwargs) -> TextEncoder:
    """None or "minilm": the embedded all-MiniLM-L6-v2; a directory whose config.json is a
    CLIP config: ``CLIPTextEncoder``; any other directory: ``BertLikeEncoder``.

    ``kwargs`` go to the encoder (max_length, cache, cache_size; mask_token for CLIP).
    Hub ids such as "openai/clip-vit-base-patch32" are not downloaded: the error says how
    to fetch them elsewhere and pass the local directory.
    """
    if name_or_path is None or name_or_path == DEFAULT_ENCODER_NAME:
        return BertLikeEncoder(None, **kwargs)
    directory = require_local_model_dir(name_or_path)
    if is_clip_dir(directory):
        return CLIPTextEncoder(directory, **kwargs)
    return BertLikeEncoder(directory, **kwargs)
