"""VQA from codes and question features."""

import pytest
import torch

from lgvq.data import ANSWER_VOCAB
from lgvq.tasks import QuestionAnswerer, vqa_examples

from .conftest import TINY, assert_loss_decreased, fit_settings


@pytest.fixture(scope="module")
def examples(train_set, codes, text_encoder):
    return vqa_examples(
        train_set, codes.dataset_indices, text_encoder, questions_per_image=4, seed=0
    )


@pytest.fixture(scope="module")
def answerer(vq_model, text_encoder, codes, examples):
    torch.manual_seed(0)
    model = QuestionAnswerer.build(vq_model, text_encoder, TINY)
    return model, model.fit(codes, examples, fit_settings())


def test_examples_match_the_dataset_questions(train_set, examples):
    assert len(examples) == 4 * len(train_set)
    assert torch.equal(examples.rows, torch.arange(len(train_set)).repeat_interleave(4))
    for row in (0, 5):
        _, answers = train_set.vqa(row)
        got = [ANSWER_VOCAB[int(a)] for a in examples.answers[examples.rows == row]]
        assert set(got) <= set(answers)
    assert len(examples.question_features) == len(set(examples.questions.tolist()))


def test_training_reduces_the_loss(answerer):
    assert_loss_decreased(answerer[1], factor=0.85)


def test_predictions_and_answers_are_in_the_answer_vocabulary(answerer, codes, examples):
    model, _ = answerer
    predicted = model.predict(codes, examples)
    assert (
        predicted.shape == (len(examples),)
        and 0 <= int(predicted.min())
        and int(predicted.max()) < len(ANSWER_VOCAB)
    )
    answers = model.answer(
        codes.indices[:2], ["how many objects are there?", "is there a red circle?"]
    )
    assert len(answers) == 2 and all(a in ANSWER_VOCAB for a in answers)


def test_bad_inputs_are_rejected(answerer, train_set, text_encoder):
    model, _ = answerer
    with pytest.raises(ValueError, match="questions must be a non-empty list"):
        model.answer(torch.zeros(1, 8, 8, dtype=torch.int64), [])
    with pytest.raises(ValueError, match=r"questions\[0\] is empty"):
        model.answer(torch.zeros(1, 8, 8, dtype=torch.int64), [""])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 256\)"):
        model.answer(torch.full((1, 8, 8), -1), ["is there a circle?"])
    with pytest.raises(ValueError, match="questions has 1 rows for 2 code grids"):
        model.answer(torch.zeros(2, 8, 8, dtype=torch.int64), ["is there a circle?"])
    with pytest.raises(TypeError, match="must provide vqa"):
        vqa_examples(list(range(3)), [0], text_encoder)
