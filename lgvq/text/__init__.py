"""Frozen pre-trained text encoders behind one interface (``TextEncoder``).

    encoder = load_text_encoder()                 # embedded all-MiniLM-L6-v2, Dt = 384
    encoder = load_text_encoder("/models/clip")   # a local CLIP directory, Dt = 512
    text = encoder(["a red bird on a branch"])    # EncodedText: words, sentence, tokens
    leak_free = encoder.encode_masked(text.tokens, mask)

Everything loads from local files only; transformers is imported when an encoder is built.
"""

from lgvq.text.base import EncodedText, TextEncoder, TokenizedText
from lgvq.text.bert import BertLikeEncoder
from lgvq.text.cache import CaptionFeatureCache
from lgvq.text.clip import CLIPTextEncoder
from lgvq.text.loading import load_text_encoder

__all__ = [
    "BertLikeEncoder",
    "CLIPTextEncoder",
    "CaptionFeatureCache",
    "EncodedText",
    "TextEncoder",
    "TokenizedText",
    "load_text_encoder",
]
