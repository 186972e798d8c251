"""Frozen pre-trained text encoders behind one interface (``TextEncoder``).

    encoder = load_text_encoder()                 # embedded all-MiniLM-L6-v2, Dt = 384
    encoder = load_text_encoder("/models/clip")   # a local CLIP directory, Dt = 512
    text = encoder(["a red bird on a branch"])    # EncodedText: words, sentence, tokens
    leak_free = encoder.encode_masked(text.tokens, mask)

A caption's unmasked features do not depend on the batch it is encoded in, so they can be
cached exactly: ``load_text_encoder(cache=True)`` keeps them in memory (``lgvq.text.cache``),
``attach_caption_table`` serves a whole dataset's from a memory-mapped file (``lgvq.text.table``).

Everything loads from local files only; transformers is imported when an encoder is built.
"""

from lgvq.text.base import EncodedText, TextEncoder, TokenizedText
from lgvq.text.bert import BertLikeEncoder
from lgvq.text.cache import CaptionFeatureCache, encode_ahead
from lgvq.text.clip import CLIPTextEncoder
from lgvq.text.loading import load_text_encoder
from lgvq.text.table import CaptionFeatureTable, StaleTableError, attach_caption_table, build_caption_table

__all__ = [
    "BertLikeEncoder",
    "CLIPTextEncoder",
    "CaptionFeatureCache",
    "CaptionFeatureTable",
    "EncodedText",
    "TextEncoder",
    "StaleTableError",
    "TokenizedText",
    "attach_caption_table",
    "build_caption_table",
    "encode_ahead",
    "load_text_encoder",
]
