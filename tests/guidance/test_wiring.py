"""LanguageGuidance's wiring: which tensor each loss reads and which tensors its gradient
reaches. Each test targets a way the assembly can go wrong while every part is right on its
own: swapped loss weights, a missing positional embedding, the wrong slice of the visual
tokens, a mask that touches special tokens, a detach missing or added."""

import pytest
import torch
import torch.nn.functional as F

from lgvq.guidance import LanguageGuidance
from lgvq.guidance.semantic import global_semantic_alignment_loss
from lgvq.ops import relation_alignment_loss
from lgvq.quantize import VectorQuantizer
from lgvq.text import EncodedText, load_text_encoder

CAPTIONS = [
    "a small red circle to the left of a large blue square",
    "a green triangle at the top",
    "two objects: a yellow star above a purple circle",
]
CODE_DIM, GRID = 8, (2, 3)


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder()


@pytest.fixture(scope="module")
def text(text_encoder):
    return text_encoder(CAPTIONS)


def make_guidance(text_encoder, **kwargs):
    torch.manual_seed(0)
    return LanguageGuidance(CODE_DIM, GRID, text_encoder, **kwargs).eval()  # eval: no dropout


def codes_for(batch: int) -> torch.Tensor:
    return torch.randn(batch, CODE_DIM, *GRID, generator=torch.Generator().manual_seed(1))


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def flat(z_q: torch.Tensor) -> torch.Tensor:
    return z_q.flatten(2).transpose(1, 2)  # (B, hw, C)


# ---- what each loss reads -------------------------------------------------------------------


def test_total_is_each_loss_times_its_own_weight(text_encoder, text):
    guidance = make_guidance(text_encoder, weights=(0.5, 2.0, 7.0))
    out = guidance(codes_for(3), text, generator=seeded())
    assert len({out.gsa.item(), out.mtp.item(), out.ras.item()}) == 3  # a swap would show
    torch.testing.assert_close(out.loss, 0.5 * out.gsa + 2.0 * out.mtp + 7.0 * out.ras)


def test_visual_tokens_depend_on_where_each_code_sits(text_encoder):
    """Without positional embeddings the ViT is permutation-equivariant: moving codes around
    the grid would only move their tokens and leave the global token unchanged."""
    guidance = make_guidance(text_encoder)
    codes = flat(codes_for(2))
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        tokens, moved = guidance.visual(codes), guidance.visual(codes[:, order])
    assert (moved[:, 0] - tokens[:, 0]).abs().max() > 1e-3
    assert (moved[:, 1:] - tokens[:, 1:][:, order]).abs().max() > 1e-3


def test_gsa_aligns_the_global_token_with_the_sentence(text_encoder, text):
    guidance = make_guidance(text_encoder, temperature=0.5)
    z_q = codes_for(3)
    out = guidance(z_q, text, generator=seeded())
    with torch.no_grad():
        tokens = guidance.visual(flat(z_q))
    expected = global_semantic_alignment_loss(guidance.sentence_proj(tokens[:, 0]), text.sentence, 0.5)
    torch.testing.assert_close(out.gsa, expected)
    wrong = global_semantic_alignment_loss(guidance.sentence_proj(tokens[:, 1]), text.sentence, 0.5)
    assert (wrong - expected).abs() > 1e-4  # the test tells the global token from the others


def test_ras_reads_the_per_position_tokens_without_the_global_one(text_encoder, text):
    guidance = make_guidance(text_encoder)
    z_q = codes_for(3)
    out = guidance(z_q, text, generator=seeded())
    codes = flat(z_q)
    with torch.no_grad():
        tokens, projected = guidance.visual(codes), guidance.relation_head(codes)

    def ras(visual_tokens):
        return relation_alignment_loss(text.words, text.tokens.attention_mask, visual_tokens, projected,
                                       backend="torch")

    torch.testing.assert_close(out.ras, ras(tokens[:, 1:]))
    assert (ras(tokens[:, :-1]) - out.ras).abs() > 1e-6  # the global token kept in would show


@pytest.mark.parametrize("mtp_input", ["leak_free", "contextual"])
def test_mtp_masks_words_only_and_scores_them_against_every_visual_token(text_encoder, text, mtp_input):
    """The forward's mask: words only (never start, end or padding), a minority of them;
    the decoder gets all 1 + hw visual tokens (the global one too); the loss is the
    label-smoothed cross-entropy of exactly the masked words."""
    guidance = make_guidance(text_encoder, mtp_input=mtp_input)
    z_q = codes_for(3)
    seen_words, seen_loss = [], []
    mtp_words, masked_loss = guidance._mtp_words, guidance.mtp.masked_loss

    def words_spy(text_, mask, leak_free):
        seen_words.append((mask, leak_free))
        return mtp_words(text_, mask, leak_free)

    def loss_spy(words_, mask, padding, visual_tokens, *args):
        seen_loss.append(visual_tokens)
        return masked_loss(words_, mask, padding, visual_tokens, *args)

    guidance._mtp_words, guidance.mtp.masked_loss = words_spy, loss_spy
    masked = total = 0
    words = ~text.tokens.special_mask
    for seed in range(8):
        out = guidance(z_q, text, generator=torch.Generator().manual_seed(seed))
        (mask, leak_free), visual_tokens = seen_words[-1], seen_loss[-1]
        assert not (mask & text.tokens.special_mask).any()
        assert leak_free == (mtp_input == "leak_free")
        masked, total = masked + int(mask.sum()), total + int(words.sum())
    assert 0.05 * total < masked < 0.5 * total  # the draw's ratio lies in [0.1, 0.3]
    with torch.no_grad():
        tokens = guidance.visual(flat(z_q))
    torch.testing.assert_close(visual_tokens, tokens)
    logits = guidance.predict_masked(text, mask, tokens, leak_free=leak_free)
    torch.testing.assert_close(out.mtp, guidance.mtp.loss(logits, text.tokens.ids[mask]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flavour", ["lgvq", "release"])
def test_mtp_hides_the_masked_words_and_ignores_padding(text_encoder, text, flavour):
    """Whatever the word features at masked or padding positions are, the prediction is the
    same: masked positions read the learned mask vectors, padding is zeroed (contextual input:
    the features are used as given). The release attends to padding, so there only the
    zeroing keeps its features out."""
    guidance = make_guidance(text_encoder, mtp_input="contextual", flavour=flavour)
    mask = torch.zeros_like(text.tokens.special_mask)
    mask[0, 3] = mask[1, 2] = mask[2, 5] = True
    padding = text.tokens.attention_mask == 0
    assert padding.any()
    with torch.no_grad():
        tokens = guidance.visual(flat(codes_for(3)))
        logits = guidance.predict_masked(text, mask, tokens, leak_free=False)
        noisy = text.words.clone()
        noisy[mask | padding] = 10 * torch.randn_like(noisy[mask | padding])
        changed = EncodedText(words=noisy, sentence=text.sentence, tokens=text.tokens)
        torch.testing.assert_close(guidance.predict_masked(changed, mask, tokens, leak_free=False), logits)
        # while an unmasked word does reach the prediction
        noisy = text.words.clone()
        noisy[0, 4] += 1.0
        changed = EncodedText(words=noisy, sentence=text.sentence, tokens=text.tokens)
        assert (guidance.predict_masked(changed, mask, tokens, leak_free=False) - logits).abs().max() > 1e-4


# ---- which tensors each loss's gradient reaches ---------------------------------------------

# True: must get a non-zero gradient; False: must get none (no path, or a detach).
ROUTES = {
    #       z_q    visual  mtp    relation sentence words
    "gsa": (True,  True,   False, False,   False,   False),
    "mtp": (True,  True,   True,  False,   False,   None),  # words: contextual input only
    "ras": (True,  False,  False, True,    False,   False),
}


def _grad_norm(tensors) -> float:
    return sum(float(t.grad.abs().sum()) for t in tensors if t.grad is not None)


@pytest.mark.parametrize("loss_name", list(ROUTES))
@pytest.mark.parametrize("mtp_input", ["leak_free", "contextual"])
def test_each_loss_reaches_exactly_its_tensors(text_encoder, text, loss_name, mtp_input):
    """Lgsa trains the visual tokens against a detached sentence; Lmtp trains the visual tokens
    and the predictor; Lras trains the relation head and the codes but neither the visual
    tokens (they only pick each word's position) nor the text. All three reach z_q."""
    guidance = make_guidance(text_encoder, mtp_input=mtp_input)
    z_q = codes_for(3).requires_grad_(True)
    words = text.words.clone().requires_grad_(True)
    sentence = text.sentence.clone().requires_grad_(True)
    differentiable = EncodedText(words=words, sentence=sentence, tokens=text.tokens)
    out = guidance(z_q, differentiable, generator=seeded())
    getattr(out, loss_name).backward()
    groups = {
        "z_q": [z_q], "visual": list(guidance.visual.parameters()), "mtp": list(guidance.mtp.parameters()),
        "relation": list(guidance.relation_head.parameters()), "sentence": [sentence], "words": [words],
    }
    expected = dict(zip(groups, ROUTES[loss_name]))
    if loss_name == "mtp":
        expected["words"] = mtp_input == "contextual"  # leak-free re-encodes the caption itself
    for group, reached in expected.items():
        norm = _grad_norm(groups[group])
        assert (norm > 0) == reached, f"{loss_name} gradient {'missing from' if reached else 'reaches'} {group}"


def test_ras_codes_take_the_relation_gradient_instead_of_z_q(text_encoder, text):
    guidance = make_guidance(text_encoder)
    z_q = codes_for(3).requires_grad_(True)
    entries = torch.randn(3, CODE_DIM, *GRID, requires_grad=True)
    guidance(z_q, text, ras_codes=entries, generator=seeded()).ras.backward()
    assert z_q.grad is None or z_q.grad.abs().sum() == 0
    assert entries.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_name", list(ROUTES))
def test_guidance_trains_the_encoder_through_the_quantizer(text_encoder, text, loss_name):
    """Behind a VectorQuantizer the straight-through z_q passes every guidance loss on to the
    encoder, and none of it to the codebook (which only its own loss trains)."""
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(3, CODE_DIM, 3, padding=1)
    quantizer = VectorQuantizer(16, CODE_DIM).train()
    guidance = make_guidance(text_encoder)
    z_q, _, _ = quantizer(encoder(torch.randn(3, 3, *GRID)))
    getattr(guidance(z_q, text, generator=seeded()), loss_name).backward()
    assert encoder.weight.grad.abs().sum() > 0
    assert quantizer.embedding.weight.grad is None or quantizer.embedding.weight.grad.abs().sum() == 0
