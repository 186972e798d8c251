"""Captioning from codes: training, greedy and beam-search decoding, input validation."""

import pytest
import torch

from lgvq.tasks import Captioner

from .conftest import TINY, assert_loss_decreased, fit_settings


@pytest.fixture(scope="module")
def captioner(vq_model, text_encoder, codes):
    torch.manual_seed(0)
    model = Captioner.build(vq_model, text_encoder, codes.captions, TINY)
    return model, model.fit(codes, fit_settings())


def test_training_reduces_the_loss(captioner):
    assert_loss_decreased(captioner[1], factor=0.7)


def test_vocabulary_is_the_training_captions_tokens(captioner, text_encoder, codes):
    model, _ = captioner
    tokens = text_encoder.tokenize(codes.captions)
    assert set(model.vocabulary.tolist()) == set(tokens.ids[tokens.attention_mask.bool()].tolist())
    assert int(model.vocabulary[model.start]) == text_encoder.tokenizer.cls_token_id
    assert int(model.vocabulary[model.end]) == text_encoder.tokenizer.sep_token_id


def test_greedy_generation_gives_one_caption_per_grid(captioner, codes):
    captions = captioner[0].generate(codes.indices[:3])
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_beam_search_with_one_beam_is_greedy(captioner, codes):
    model, _ = captioner
    assert model.generate(codes.indices[:4], beam_size=1) == model.generate(codes.indices[:4])


def test_beam_search_returns_captions_in_the_vocabulary(captioner, codes, text_encoder):
    model, _ = captioner
    captions = model.generate(codes.indices[:3], beam_size=3)
    assert len(captions) == 3
    vocabulary = set(model.vocabulary.tolist())
    for caption in captions:
        assert (
            set(text_encoder.tokenizer(caption, add_special_tokens=False)["input_ids"])
            <= vocabulary
        )


def test_beam_search_finds_the_likelier_caption_greedy_misses(captioner, codes, monkeypatch):
    """A hand-made next-token model: greedy takes word a (0.6) and then can only end with
    probability 0.4 (total 0.24); beam search also keeps word b (0.4), after which the
    caption ends for sure (total 0.4)."""
    model, _ = captioner
    a, b = [c for c in range(len(model.vocabulary)) if c not in (model.start, model.end)][:2]
    table = {
        (): {a: 0.6, b: 0.4},
        (a,): {model.end: 0.4, a: 0.3, b: 0.3},
        (b,): {model.end: 1.0},
    }

    def next_logits(memory, classes):
        logits = torch.full((len(classes), len(model.vocabulary)), -1e9)
        for row, prefix in enumerate(classes[:, 1:].tolist()):
            for cls, prob in table.get(
                tuple(prefix[:1]) if prefix else (), {model.end: 1.0}
            ).items():
                logits[row, cls] = torch.tensor(prob).log()
        return logits

    monkeypatch.setattr(model, "_next_logits", next_logits)
    greedy = model._greedy(torch.zeros(1, 1, 1))
    beam = model._beam_search(torch.zeros(1, 1, 1), 2, length_penalty=0.0)
    assert greedy[0, 1:3].tolist() == [a, model.end]
    assert beam[0, 1:3].tolist() == [b, model.end]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(indices=torch.full((1, 8, 8), 256)), ValueError, r"indices must lie in \[0, 256\)"),
        (
            dict(indices=torch.zeros(8, 8, dtype=torch.int64)),
            ValueError,
            "indices must have 3 dimensions",
        ),
        (dict(beam_size=0), ValueError, "beam_size must be > 0"),
        (dict(beam_size=10_000), ValueError, "beam_size must be <= the vocabulary size"),
    ],
)
def test_generation_rejects_bad_inputs(captioner, kwargs, error, message):
    args = dict(indices=torch.zeros(1, 8, 8, dtype=torch.int64)) | kwargs
    with pytest.raises(error, match=message):
        captioner[0].generate(**args)


def test_targets_reject_empty_or_unknown_captions(captioner):
    model, _ = captioner
    with pytest.raises(ValueError, match="captions must be a non-empty list"):
        model.targets([])
    with pytest.raises(ValueError, match=r"captions\[0\] is empty"):
        model.targets([""])
    with pytest.raises(ValueError, match="outside the captioner's vocabulary"):
        model.targets(["a zebra riding a bicycle"])
