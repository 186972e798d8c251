"""LanguageGuidance(flavour="release") against the release's own computation.

``release_oracle.ReleaseTextSupervision`` re-expresses the release's text supervision with its
module layout and key names; its weights are loaded into lgvq's release flavour through the
converter's key mapping, both get the same codes, text features, token ids and word mask, and
their Lgsa, Lmtp and Lras and every gradient must agree to 1e-5 — in eval mode and in
training mode. In training mode dropout draws its masks in memory order, and torch's attention
returns a transposed view where the release's is contiguous, so equal seeds do not give equal
masks; ``numbered_dropout`` therefore makes the k-th dropout call of a forward use the k-th
fixed mask (in logical order), and the two agree exactly when dropout sits at the same places
with the same rates (the release: after each sub-layer and inside the FFN, never on attention
weights).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lgvq.experiment.config import load_config
from lgvq.experiment.convert import guidance_state_from_release
from lgvq.guidance import RELEASE_WEIGHTS, LanguageGuidance
from lgvq.guidance.semantic import sample_mask_ratio, sample_word_mask
from lgvq.text import EncodedText, TokenizedText, load_text_encoder
from tests.guidance.release_oracle import ReleaseTextSupervision, release_text_inputs

CAPTIONS = [
    "a small red bird with a short black beak sits on a thin branch",
    "the woman has blond hair and a big smile",
    "a sign that says open",
]
CODE_DIM, GRID, TEXT_LEN = 16, 4, 16
TOL = 1e-5


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder(max_length=TEXT_LEN)


def _pair(text_encoder, seed=0):
    torch.manual_seed(seed)
    oracle = ReleaseTextSupervision(CODE_DIM, text_encoder.word_embeddings, grid=GRID, text_len=TEXT_LEN)
    guidance = LanguageGuidance(CODE_DIM, GRID, text_encoder, flavour="release", backend="torch")
    guidance.load_state_dict(guidance_state_from_release(oracle.state_dict()), strict=True)
    return oracle, guidance


def _inputs(text_encoder, seed=1):
    """Codes, text features (non-zero at padding, as CLIP's are), tokens and the word mask
    that ``LanguageGuidance.forward`` will draw from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    tokens = text_encoder.tokenize(CAPTIONS)
    batch, length = tokens.ids.shape
    text = EncodedText(
        words=torch.randn(batch, length, text_encoder.dim, generator=gen),
        sentence=torch.randn(batch, text_encoder.sentence_dim, generator=gen),
        tokens=tokens,
    )
    z_q = torch.randn(batch, CODE_DIM, GRID, GRID, generator=gen)
    draw = torch.Generator().manual_seed(seed)
    mask = sample_word_mask(tokens, sample_mask_ratio(draw), draw)
    assert mask.sum() >= 3 and (tokens.attention_mask == 0).any()  # masked words and padding both occur
    return z_q, text, mask


@pytest.fixture
def numbered_dropout(monkeypatch):
    """Replace F.dropout: the k-th active call since ``reset()`` keeps elements where a
    generator seeded with k draws uniforms ≥ p, in the tensor's logical order."""

    class Numbered:
        calls = 0

        def reset(self):
            self.calls = 0

        def __call__(self, x, p=0.5, training=True, inplace=False):
            if not training or p == 0.0:
                return x
            self.calls += 1
            keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(self.calls)) >= p
            return x * keep.to(x.dtype) / (1 - p)

    numbered = Numbered()
    monkeypatch.setattr(F, "dropout", numbered)
    return numbered


def _release_losses(oracle, z_q, text, mask):
    """text_supervise with the release's inputs (``release_text_inputs``)."""
    text_mask, padding = release_text_inputs(text.tokens.ids, text.tokens.attention_mask, mask)
    return oracle.text_supervise(z_q, text.words, text.sentence, text_mask, padding, text.tokens.ids)


def _gradients(loss, z_q, module):
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, [z_q, *params.values()], retain_graph=True, allow_unused=True)
    as_zero = [torch.zeros_like(t) if g is None else g for t, g in zip([z_q, *params.values()], grads)]
    return as_zero[0], dict(zip(params, as_zero[1:]))


def _max_differences(oracle, guidance, z_q, text, mask, dropout=None):
    """{loss name: (|Δ loss|, max |Δ grad| over z_q and all parameters)} for the three losses."""
    z_release = z_q.clone().requires_grad_(True)
    z_lgvq = z_q.clone().requires_grad_(True)
    if dropout is not None:
        dropout.reset()
    theirs = _release_losses(oracle, z_release, text, mask)
    if dropout is not None:
        assert dropout.calls == 8  # 2 layers × (3 sub-layers + the FFN's inner dropout)
        dropout.reset()
    out = guidance(z_lgvq, text, generator=torch.Generator().manual_seed(1))
    result = {}
    for name, release_loss, lgvq_loss in zip(("gsa", "mtp", "ras"), theirs, (out.gsa, out.mtp, out.ras)):
        dz_release, release_grads = _gradients(release_loss, z_release, oracle)
        dz_lgvq, lgvq_grads = _gradients(lgvq_loss, z_lgvq, guidance)
        mapped = guidance_state_from_release(release_grads)
        assert set(mapped) <= set(lgvq_grads)  # the release flavour loads strictly: equal sets
        grad_diff = max(
            float((dz_release - dz_lgvq).abs().max()),
            *(float((mapped[k] - lgvq_grads[k]).abs().max()) for k in mapped),
        )
        assert float(dz_lgvq.abs().max()) > 0  # every loss reaches the codes
        result[name] = (abs(release_loss.item() - lgvq_loss.item()), grad_diff)
    return result


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-dropout"])
def test_release_flavour_matches_the_release_losses_and_gradients(text_encoder, numbered_dropout, training):
    oracle, guidance = _pair(text_encoder)
    oracle.train(training)
    guidance.train(training)
    z_q, text, mask = _inputs(text_encoder)
    diffs = _max_differences(oracle, guidance, z_q, text, mask, numbered_dropout if training else None)
    for name, (loss_diff, grad_diff) in diffs.items():
        assert loss_diff < TOL and grad_diff < TOL, f"{name}: |Δloss| {loss_diff:.2e}, max |Δgrad| {grad_diff:.2e}"


def _with_id_zero_words(text, mask):
    """The text with id 0 (CLIP's "!") at one masked and one kept word of the first caption."""
    words = ~text.tokens.special_mask[0]
    masked, kept = (mask[0] & words).nonzero()[0, 0], (~mask[0] & words).nonzero()[0, 0]
    ids = text.tokens.ids.clone()
    ids[0, masked] = ids[0, kept] = 0
    tokens = TokenizedText(ids, text.tokens.attention_mask, text.tokens.special_mask)  # ids no longer spell it
    return EncodedText(words=text.words, sentence=text.sentence, tokens=tokens)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-dropout"])
def test_release_flavour_treats_id_zero_inside_a_caption_as_padding(text_encoder, numbered_dropout, training):
    """The release's padding is ``ids == 0``: an id-0 word is zeroed, never predicted and left
    out of Lras, whether masked or kept; the default flavour keeps the attention mask."""
    oracle, guidance = _pair(text_encoder)
    oracle.train(training)
    guidance.train(training)
    z_q, text, mask = _inputs(text_encoder)
    text = _with_id_zero_words(text, mask)
    diffs = _max_differences(oracle, guidance, z_q, text, mask, numbered_dropout if training else None)
    for name, (loss_diff, grad_diff) in diffs.items():
        assert loss_diff < TOL and grad_diff < TOL, f"{name}: |Δloss| {loss_diff:.2e}, max |Δgrad| {grad_diff:.2e}"
    default = LanguageGuidance(CODE_DIM, GRID, text_encoder)
    assert default.padding(text.tokens).sum() == (text.tokens.attention_mask == 0).sum()
    assert guidance.padding(text.tokens).sum() == default.padding(text.tokens).sum() + 2


def test_the_default_flavour_differs_from_the_release(text_encoder):
    """The same weights in the lgvq flavour (padding masked, GELU, eps 1e-5, attention-weight
    dropout) do not reproduce the release: the oracle comparison can tell the flavours apart."""
    oracle, _ = _pair(text_encoder)
    state = guidance_state_from_release(oracle.state_dict())
    default = LanguageGuidance(CODE_DIM, GRID, text_encoder, mtp_input="contextual", backend="torch")
    default.load_state_dict({**default.state_dict(), **state}, strict=True)  # keeps its own proj bias
    default.visual.proj.bias.data.zero_()
    oracle.eval()
    default.eval()
    z_q, text, mask = _inputs(text_encoder)
    diffs = _max_differences(oracle, default, z_q, text, mask)
    assert diffs["mtp"][0] > 1e-3  # padding attended vs masked, QuickGELU vs GELU


def test_release_flavour_builds_the_release_modules(text_encoder):
    guidance = LanguageGuidance(CODE_DIM, GRID, text_encoder, flavour="release")
    assert guidance.mtp_input == "contextual" and guidance.visual.proj.bias is None
    for layer in guidance.mtp.decoder.layers:
        assert layer.self_attn.dropout == 0.0 and layer.multihead_attn.dropout == 0.0
        assert layer.dropout1.p == layer.dropout.p == 0.1
        assert layer.norm1.eps == 1e-12
    default = LanguageGuidance(CODE_DIM, GRID, text_encoder)
    assert default.mtp_input == "leak_free" and default.mtp.decoder.layers[0].self_attn.dropout == 0.1
    with pytest.raises(ValueError, match="flavour"):
        LanguageGuidance(CODE_DIM, GRID, text_encoder, flavour="paper")


def test_release_flavour_initialises_like_the_release(text_encoder):
    """The release's stds: 0.01 for CLS, positions, ViT projection and relation layer;
    width^-0.5 for the ViT's attention input; d^-0.5 for the decoder's projections."""
    torch.manual_seed(0)
    g = LanguageGuidance(64, 8, text_encoder, flavour="release")
    d = text_encoder.dim
    checks = {
        "cls+positions": (torch.cat([g.visual.cls.flatten(), g.visual.positions.flatten()]), 0.01),
        "proj": (g.visual.proj.weight, 0.01),
        "relation": (g.relation_head[0].weight, 0.01),
        "vit attention": (g.visual.transformer.layers[0].self_attn.in_proj_weight, 64 ** -0.5),
        "vit mlp out": (g.visual.transformer.layers[1].linear2.weight, 64 ** -0.5 * 4 ** -0.5),
        "decoder attention": (g.mtp.decoder.layers[0].multihead_attn.in_proj_weight, d ** -0.5),
        "decoder ffn": (g.mtp.decoder.layers[1].linear1.weight, d ** -0.5),
    }
    for name, (weights, std) in checks.items():
        assert float(weights.std()) == pytest.approx(std, rel=0.05), name
    layers = g.mtp.decoder.layers
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)  # drawn per layer
    assert not torch.equal(layers[0].linear1.bias, layers[1].linear1.bias)


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("configs/paper/*-lg.yaml")), ids=lambda p: p.stem)
def test_paper_configs_use_the_release_flavour_and_weights(path):
    config = load_config(path)
    assert config.guidance.enabled and config.guidance.flavour == "release"
    expected = RELEASE_WEIGHTS.get(config.data.name, (1e-3, 1e-3, 1e-3))  # no release config for COCO
    assert tuple(config.guidance.weights) == pytest.approx(expected)
