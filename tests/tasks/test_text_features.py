"""Text features: de-duplicated encoding, trimming of all-padding columns, validation."""

import pytest
import torch

from lgvq.tasks import encode_text_table, encode_texts


def test_features_match_the_encoder_and_drop_padding_columns(text_encoder):
    texts = ["a red circle", "two objects: a small blue square and a green cross", "a red circle"]
    features = encode_texts(text_encoder, texts)
    reference = text_encoder(texts)
    length = int(reference.tokens.attention_mask.sum(1).max())
    assert features.words.shape == (3, length, text_encoder.dim)
    assert torch.allclose(features.words, reference.words[:, :length].cpu(), atol=1e-5)
    assert torch.equal(features.mask, reference.tokens.attention_mask[:, :length].bool().cpu())


def test_table_encodes_each_distinct_string_once(text_encoder):
    table, rows = encode_text_table(
        text_encoder, ["is there a circle?", "is there a square?", "is there a circle?"]
    )
    assert len(table) == 2 and rows.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "texts, error, message",
    [
        ([], ValueError, "texts must be a non-empty list"),
        ("a red circle", TypeError, "texts must be a list of str"),
        (["a red circle", ""], ValueError, r"texts\[1\] is empty"),
        ([None], TypeError, r"texts\[0\] must be a str"),
    ],
)
def test_bad_texts_are_rejected(text_encoder, texts, error, message):
    with pytest.raises(error, match=message):
        encode_texts(text_encoder, texts)
