"""The AR code transformer in its three uses: text-to-image, unconditional, completion."""

import pytest
import torch

from lgvq.tasks import (
    CodeTransformer,
    Sampling,
    TextToImage,
    UnconditionalGenerator,
    complete,
    decode_codes,
    filter_logits,
    frozen_codebook,
)

from .conftest import TINY, assert_loss_decreased, fit_settings, greedy_by_hand


@pytest.fixture(scope="module")
def unconditional(vq_model, codes):
    torch.manual_seed(0)
    generator = UnconditionalGenerator.build(vq_model, TINY)
    return generator, generator.fit(codes, fit_settings())


@pytest.fixture(scope="module")
def text_to_image(vq_model, text_encoder, codes):
    torch.manual_seed(0)
    t2i = TextToImage.build(vq_model, text_encoder, TINY)
    return t2i, t2i.fit(codes, fit_settings())


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = ~torch.isinf(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    assert (~torch.isinf(filter_logits(logits, top_p=0.01))).sum() == 1  # the best always survives


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_bad_sampling_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_unconditional_training_reduces_the_loss(unconditional):
    assert_loss_decreased(unconditional[1])


def test_unconditional_samples_are_valid_codes_that_decode(unconditional, vq_model):
    generator, _ = unconditional
    indices = generator.generate(3, sampling=Sampling(top_k=16, top_p=0.9, temperature=0.8), seed=1)
    assert indices.shape == (3, 8, 8) and indices.dtype == torch.int64
    assert 0 <= int(indices.min()) and int(indices.max()) < vq_model.config.n_embed
    assert decode_codes(vq_model, indices).shape == (3, 3, 32, 32)
    assert torch.equal(
        indices,
        generator.generate(3, sampling=Sampling(top_k=16, top_p=0.9, temperature=0.8), seed=1),
    )


def test_top_k_1_sampling_is_greedy_decoding(unconditional):
    generator, _ = unconditional
    sampled = generator.generate(2, sampling=Sampling(top_k=1), seed=123)
    assert torch.equal(sampled, greedy_by_hand(generator.transformer, 2))


def test_text_to_image_training_reduces_the_loss(text_to_image):
    assert_loss_decreased(text_to_image[1])


def test_text_to_image_generates_one_valid_grid_per_prompt(text_to_image, vq_model):
    t2i, _ = text_to_image
    prompts = ["a red circle", "two objects: a blue square and a green cross"]
    indices = t2i.generate(prompts, sampling=Sampling(top_k=8))
    assert indices.shape == (2, 8, 8) and 0 <= int(indices.min()) and int(indices.max()) < 256
    assert decode_codes(vq_model, indices).shape == (2, 3, 32, 32)
    # greedy generation is conditioned on each row's own prompt: it equals decoding by hand
    # with the prompts' features, and a prompt alone (no padding) gives the same grid as in
    # the batch next to a longer prompt
    greedy = t2i.generate(prompts, sampling=Sampling(top_k=1))
    assert torch.equal(greedy, greedy_by_hand(t2i.transformer, 2, condition=t2i.encode_prompts(prompts)))
    assert torch.equal(greedy[:1], t2i.generate(prompts[:1], sampling=Sampling(top_k=1)))


@pytest.mark.parametrize(
    "prompts, error, message",
    [
        ([], ValueError, "prompts must be a non-empty list"),
        (["a red circle", "  "], ValueError, r"prompts\[1\] is empty"),
        ("a red circle", TypeError, "prompts must be a list of str"),
        ([3], TypeError, r"prompts\[0\] must be a str"),
    ],
)
def test_text_to_image_rejects_bad_prompts(text_to_image, prompts, error, message):
    with pytest.raises(error, match=message):
        text_to_image[0].generate(prompts)


def test_conditioning_must_match_the_transformer(vq_model, text_to_image, unconditional):
    with pytest.raises(ValueError, match="conditional: pass condition"):
        text_to_image[0].transformer.sample(2)
    with pytest.raises(ValueError, match="unconditional: condition must be None"):
        unconditional[0].transformer.sample(
            1, condition=text_to_image[0].encode_prompts(["a red circle"])
        )
    with pytest.raises(ValueError, match="must be conditional"):
        TextToImage(unconditional[0].transformer, None)


def test_completion_keeps_the_given_rows_and_fills_the_rest(unconditional, codes):
    generator, _ = unconditional
    original = codes.indices[:4]
    completed = complete(generator.transformer, original, sampling=Sampling(top_k=8), seed=0)
    assert completed.shape == original.shape
    assert torch.equal(completed[:, :4], original[:, :4])
    assert 0 <= int(completed.min()) and int(completed.max()) < 256
    assert torch.equal(complete(generator.transformer, original, given_rows=8), original)


def test_completion_works_with_a_caption_condition(text_to_image, codes):
    t2i, _ = text_to_image
    condition = t2i.encode_prompts(codes.captions[:2])
    completed = complete(t2i.transformer, codes.indices[:2], given_rows=2, condition=condition)
    assert torch.equal(completed[:, :2], codes.indices[:2, :2])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(indices=torch.full((1, 8, 8), 300)), ValueError, r"indices must lie in \[0, 256\)"),
        (dict(indices=torch.zeros(1, 8, 4, dtype=torch.int64)), ValueError, r"shape \(B, 8, 8\)"),
        (dict(given_rows=9), ValueError, r"given_rows must be in \[0, 8\]"),
        (dict(given_rows=2.0), TypeError, "given_rows must be an int"),
    ],
)
def test_completion_rejects_bad_inputs(unconditional, kwargs, error, message):
    args = dict(indices=torch.zeros(1, 8, 8, dtype=torch.int64)) | kwargs
    with pytest.raises(error, match=message):
        complete(unconditional[0].transformer, **args)


def test_loss_rejects_out_of_range_codes(vq_model):
    transformer = CodeTransformer(frozen_codebook(vq_model), (8, 8), TINY)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 256\)"):
        transformer.loss(torch.full((1, 8, 8), -3))
    with pytest.raises(ValueError, match="prefix must have shape"):
        transformer.sample(2, prefix=torch.zeros(3, 4, dtype=torch.int64))
