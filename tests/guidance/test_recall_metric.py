"""The masked-word recall metric (the paper's Table 3) reads the caption through the leak-free
path: the predictor's logits cannot depend on the words it is asked to recover.

``test_language_guidance.py`` checks ``predict_masked(leak_free=True)`` itself; this checks
that the metric takes that path and not the contextual one the release trains with (whose
unmasked caption features have seen the masked words), a bug that would inflate recall.
"""

import pytest
import torch

from lgvq.guidance import LanguageGuidance
from lgvq.text import load_text_encoder

# same length once tokenized, differing only in the colour word
TWINS = ["a red circle", "a blue circle"]


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder()


def recorded_logits(guidance: LanguageGuidance) -> list[torch.Tensor]:
    """The logits the masked-word predictor returns, recorded on every call."""
    calls, logits = [], guidance.mtp.logits

    def record(*args, **kwargs):
        calls.append(logits(*args, **kwargs))
        return calls[-1]

    guidance.mtp.logits = record
    return calls


def test_recall_cannot_see_the_masked_words(text_encoder):
    """Every word of both captions masked and the same image: leak-free, the predictor sees
    two identical inputs ([CLS] [MASK] [MASK] [MASK] [SEP]), so its logits agree row for
    row; through the contextual path the two captions' features differ."""
    guidance = LanguageGuidance(8, 2, text_encoder).eval()
    tokens = text_encoder.tokenize(TWINS)
    assert tokens.ids.shape[0] == 2 and bool((tokens.ids[0] != tokens.ids[1]).any())
    words = int((~tokens.special_mask[0]).sum())
    z_q = torch.randn(1, 8, 2, 2).expand(2, -1, -1, -1)
    calls = recorded_logits(guidance)
    correct, total = guidance.masked_word_recall(z_q, TWINS, num_masked=30)  # more than any caption's words
    assert total == 2 * words and len(calls) == 1
    first, second = calls[0].split(words)
    assert torch.allclose(first, second, atol=1e-5), "the recall metric's predictions depend on the masked words"

    # the contextual path does see them: with it, the same comparison tells the captions apart
    text, mask = guidance.encode_text(TWINS), ~tokens.special_mask
    visual = guidance.visual(z_q.flatten(2).transpose(1, 2))
    contextual = guidance.predict_masked(text, mask, visual, leak_free=False)
    assert not torch.allclose(*contextual.split(words), atol=1e-3)
