"""LanguageGuidance: each loss against a hand computation, the leak-free masked text
prediction, the alignment metrics, and a tiny VQ model whose every loss decreases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import strict_mode
from lgvq.guidance import LanguageGuidance
from lgvq.guidance.semantic import (
    global_semantic_alignment_loss,
    mask_k_words,
    sample_mask_ratio,
    sample_word_mask,
)
from lgvq.quantize import VectorQuantizer
from lgvq.text import load_text_encoder

CAPTIONS = [
    "a small red circle to the left of a large blue square",
    "a green triangle at the top",
    "two objects: a yellow star above a purple circle",
    "there is a large orange square",
]


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder()


def test_gsa_matches_hand_computation():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    s = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # ĝ·ŝ: row 0 → [1, 1/√2]; row 1 → [0, 1/√2]
    r = 1 / math.sqrt(2)
    loss0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(r) + 1e-6))
    loss1 = -math.log(math.exp(r) / (math.exp(0) + math.exp(r) + 1e-6))
    got = global_semantic_alignment_loss(g, s)
    assert got.item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    # temperature divides the logits
    got_t = global_semantic_alignment_loss(g, s, temperature=0.5)
    loss0_t = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * r) + 1e-6))
    loss1_t = -math.log(math.exp(2 * r) / (1 + math.exp(2 * r) + 1e-6))
    assert got_t.item() == pytest.approx((loss0_t + loss1_t) / 2, rel=1e-6)


def test_gsa_sentence_is_a_detached_target():
    g = torch.randn(3, 4, requires_grad=True)
    s = torch.randn(3, 4, requires_grad=True)
    global_semantic_alignment_loss(g, s).backward()
    assert g.grad is not None and s.grad is None


def test_gsa_is_finite_and_exact_at_a_tiny_temperature():
    """τ = 0.005 puts logits near ±200, past fp32's exp range: the fp32 loss and its gradient
    must still equal the naive formula evaluated in float64 (where exp(200) is finite)."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(5, 8, generator=gen, requires_grad=True)
    s = torch.randn(5, 8, generator=gen)
    got = global_semantic_alignment_loss(g, s, temperature=0.005)
    got.backward()
    g64 = g.detach().double().requires_grad_(True)
    logits = F.normalize(g64, dim=-1) @ F.normalize(s.double(), dim=-1).t() / 0.005
    expected = -(logits.diagonal() - torch.log(logits.exp().sum(1) + 1e-6)).mean()
    expected.backward()
    assert logits.abs().max() > 100  # fp32 exp would overflow here
    assert torch.isfinite(got) and got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(g.grad.double(), g64.grad, rtol=1e-4, atol=1e-6)


def test_mask_ratio_is_truncated_normal_in_range():
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_mask_ratio(gen) for _ in range(2000)])
    assert draws.min() >= 0.1 and draws.max() <= 0.3
    # N(0.5, 0.1) restricted to [0.1, 0.3] piles up at the upper bound
    assert draws.mean() > 0.25


def test_word_masks_never_touch_special_tokens(text_encoder):
    tokens = text_encoder.tokenize(CAPTIONS)
    gen = torch.Generator().manual_seed(1)
    mask = sample_word_mask(tokens, 0.9, gen)
    assert not (mask & tokens.special_mask).any() and mask.any()
    exact = mask_k_words(tokens, 3, gen)
    assert exact.sum(1).tolist() == [3, 3, 3, 3]
    assert not (exact & tokens.special_mask).any()


def test_mtp_loss_is_label_smoothed_ce(text_encoder):
    guidance = LanguageGuidance(8, 2, text_encoder)
    logits = torch.randn(2, 5)  # two masked positions
    targets = torch.tensor([1, 3])
    got = guidance.mtp.loss(logits, targets)
    logp = logits.log_softmax(-1)
    smoothed = -(0.9 * logp[torch.arange(2), targets] + 0.1 * logp.mean(-1))
    assert got.item() == pytest.approx(smoothed.mean().item(), rel=1e-5)
    assert guidance.mtp.loss(logits[:0], targets[:0]).item() == 0.0


def _visual_tokens(guidance, batch):
    return guidance.visual(torch.randn(batch, 4, 8))


def test_leak_free_prediction_cannot_see_the_masked_word(text_encoder):
    """Two captions that differ only in the masked word: leak-free logits are identical,
    while the released contextual input differs (the leak)."""
    guidance = LanguageGuidance(8, 2, text_encoder).eval()
    text = text_encoder(["a red circle", "a blue circle"])
    word = text.tokens.ids[0] != text.tokens.ids[1]
    assert word.sum() == 1  # "red" vs "blue": one differing position
    mask = word.expand(2, -1)
    visual = _visual_tokens(guidance, 1).expand(2, -1, -1)
    leak_free = guidance.predict_masked(text, mask, visual, leak_free=True)
    contextual = guidance.predict_masked(text, mask, visual, leak_free=False)
    assert leak_free.shape == (2, text_encoder.vocab_size)  # one row per masked word
    assert torch.allclose(leak_free[0], leak_free[1], atol=1e-5)
    assert not torch.allclose(contextual[0], contextual[1], atol=1e-3)


def test_text_encoder_is_not_in_state_dict(text_encoder):
    guidance = LanguageGuidance(8, 2, text_encoder)
    assert not any(k.startswith("text_encoder") for k in guidance.state_dict())
    assert all(p.requires_grad for p in guidance.parameters())


def test_inputs_are_checked(text_encoder):
    guidance = LanguageGuidance(8, 2, text_encoder)
    with pytest.raises(ValueError, match="C=8"):
        guidance(torch.randn(2, 6, 2, 2), CAPTIONS[:2])
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        guidance(torch.randn(3, 8, 2, 2), CAPTIONS[:2])
    with pytest.raises(ValueError, match="grid_size"):
        guidance(torch.randn(2, 8, 3, 3), CAPTIONS[:2])
    with pytest.raises(ValueError, match="empty"):
        guidance(torch.randn(2, 8, 2, 2), ["a cat", "  "])
    with pytest.raises(ValueError, match="mtp_input"):
        LanguageGuidance(8, 2, text_encoder, mtp_input="masked")
    with pytest.raises(TypeError, match="TextEncoder"):
        LanguageGuidance(8, 2, object())


def test_layouts_agree(text_encoder):
    guidance = LanguageGuidance(8, (2, 3), text_encoder).eval()
    z = torch.randn(2, 8, 2, 3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.manual_seed(0)
    a = guidance(z, CAPTIONS[:2], generator=gen())
    torch.manual_seed(0)
    b = guidance(z.permute(0, 2, 3, 1), CAPTIONS[:2], channels_last=True, generator=gen())
    torch.manual_seed(0)
    c = guidance(z.flatten(2).transpose(1, 2), CAPTIONS[:2], generator=gen())
    for other in (b, c):
        assert torch.allclose(a.loss, other.loss, atol=1e-6)


def test_masked_word_recall_counts_the_correct_predictions(text_encoder):
    """Every word masked (num_masked exceeds every caption) and a head that always answers
    "a": recall counts exactly the captions' "a"s, out of all their words."""
    guidance = LanguageGuidance(8, 2, text_encoder).eval()
    tokens = text_encoder.tokenize(CAPTIONS)
    a = int(text_encoder.tokenize(["a"]).ids[0, 1])
    with torch.no_grad():
        guidance.mtp.vocab_bias[a] = 1e4  # dwarfs every other logit
    words = ~tokens.special_mask
    correct, total = guidance.masked_word_recall(torch.randn(4, 8, 2, 2), CAPTIONS, num_masked=30)
    assert total == int(words.sum())
    assert correct == int(((tokens.ids == a) & words).sum()) > 0
    _, total = guidance.masked_word_recall(torch.randn(4, 8, 2, 2), CAPTIONS, num_masked=3)
    assert total == 12


def test_word_code_mse_by_hand(text_encoder):
    """The Table 4 metric written out pair by pair: each word's matched position is the
    visual token most cosine-similar to it; the error compares the words' cosine with the
    cosine of the projected codes at their matched positions."""
    guidance = LanguageGuidance(8, 2, text_encoder).eval()
    z = torch.randn(2, 8, 2, 2)
    text = text_encoder(CAPTIONS[:2])
    sse, pairs = guidance.word_code_similarity_mse(z, text)
    codes = z.flatten(2).transpose(1, 2)
    with torch.no_grad():
        visual = guidance.visual(codes)[:, 1:]
        projected = guidance.relation_head(codes)
    cos = lambda u, v: F.cosine_similarity(u, v, dim=-1).item()  # noqa: E731
    expected, count = 0.0, 0
    for b in range(2):
        real = [i for i in range(text.words.shape[1]) if not text.tokens.special_mask[b, i]]
        match = {i: int(F.cosine_similarity(text.words[b, i][None], visual[b], dim=-1).argmax()) for i in real}
        for i in real:
            for j in real:
                if i != j:
                    code_cos = cos(projected[b, match[i]], projected[b, match[j]])
                    expected += (cos(text.words[b, i], text.words[b, j]) - code_cos) ** 2
                    count += 1
    assert pairs == count
    assert sse == pytest.approx(expected, rel=1e-4)


def test_word_code_mse_with_one_grid_position_is_the_words_dissimilarity(text_encoder):
    """A single grid position: every word matches it, so every code similarity is 1 and the
    metric is the sum over pairs of distinct words of (cos(w_i, w_j) - 1)²."""
    guidance = LanguageGuidance(8, 1, text_encoder).eval()
    text = text_encoder(["a red circle"])
    w = F.normalize(text.words[0][~text.tokens.special_mask[0]], dim=-1)
    sim = w @ w.t()
    off = ~torch.eye(sim.shape[0], dtype=torch.bool)
    assert off.any()  # several words
    sse, pairs = guidance.word_code_similarity_mse(torch.randn(1, 8, 1, 1), text)
    expected = float(((sim - 1) ** 2)[off].sum())
    assert pairs == int(off.sum()) and sse == pytest.approx(expected, rel=1e-4) and expected > 0


class TinyVQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 8, 4, 2, 1))
        self.quantizer = VectorQuantizer(32, 8)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 3, 4, 2, 1))


def test_tiny_vq_with_guidance_its_losses_decrease(text_encoder):
    """Joint training on a fixed batch: reconstruction, Lgsa (sharper temperature) and Lmtp
    fall. Lras is not checked here: over 10 steps it moves by ~1e-4 and jumps by ~1e-2 whenever
    its target matching (each word's best visual token) shifts, so which way it ends depends
    on the random draws, not on a bug; ``test_wiring`` checks its weight, sign and gradient."""
    torch.manual_seed(0)
    model = TinyVQ()
    guidance = LanguageGuidance(8, 4, text_encoder, weights=(1.0, 1.0, 10.0), temperature=0.1)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    text = text_encoder(CAPTIONS)  # encoded once, as the caption cache would
    opt = torch.optim.Adam(list(model.parameters()) + list(guidance.parameters()), lr=1e-3)
    history = []
    for _ in range(10):
        z_q, vq_loss, _ = model.quantizer(model.encoder(images))
        rec = F.mse_loss(model.decoder(z_q), images)
        out = guidance(z_q, text, generator=torch.Generator().manual_seed(0))
        loss = rec + vq_loss + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append([rec.item(), out.gsa.item(), out.mtp.item()])
    for name, first, last in zip(["rec", "gsa", "mtp"], history[0], history[-1]):
        assert last < first, f"{name} did not decrease: {first:.5f} -> {last:.5f}"


def test_float64_z_q_gives_the_float32_losses_and_a_float64_gradient(text_encoder):
    guidance = LanguageGuidance(16, 4, text_encoder).eval()
    z_q = torch.randn(4, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    wide = guidance(z_q, CAPTIONS, generator=torch.Generator().manual_seed(0))
    narrow = guidance(z_q.detach().float(), CAPTIONS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(wide.loss, narrow.loss)
    wide.loss.backward()
    assert z_q.grad.dtype == torch.float64 and z_q.grad.abs().sum() > 0


def test_nan_z_q_is_reported_as_z_q(text_encoder):
    guidance = LanguageGuidance(16, 4, text_encoder)
    z_q = torch.randn(4, 16, 4, 4)
    z_q[1, 2, 3, 0] = float("nan")
    with strict_mode(), pytest.raises(ValueError, match="^z_q contains NaN or Inf$"):  # a value check: strict mode
        guidance(z_q, CAPTIONS)


@pytest.mark.parametrize("release", [False, True])
def test_static_shape_mtp_loss_equals_the_selected_rows_loss(text_encoder, monkeypatch, release):
    """On an accelerator the training step scores every position and averages over the
    masked ones; on the CPU it scores only the selected rows. Both must give the loss over
    the selected rows, with the same gradients (and 0 with nothing masked)."""
    from lgvq.guidance import semantic

    guidance = LanguageGuidance(8, 2, text_encoder, flavour="release" if release else "lgvq").eval()
    text = text_encoder(CAPTIONS)
    mask = sample_word_mask(text.tokens, 0.5, torch.Generator().manual_seed(3))
    visual = _visual_tokens(guidance, 4).detach().requires_grad_(True)
    words = text_encoder.encode_masked(text.tokens, mask).words
    padding = text.tokens.attention_mask == 0
    args = (words, mask, padding, visual, text_encoder.word_embeddings)
    assert mask.sum() > 1

    def loss_and_grads(selection_free: bool):
        monkeypatch.setattr(semantic, "_selection_is_free", lambda m: selection_free)
        loss = guidance.mtp.masked_loss(*args, text.tokens.ids)
        return loss, torch.autograd.grad(loss, [visual, guidance.mtp.vocab_bias, guidance.mtp.mask_vectors])

    selected = guidance.mtp.loss(guidance.mtp.logits(*args), text.tokens.ids[mask])
    (static, static_grads), (rows, rows_grads) = loss_and_grads(False), loss_and_grads(True)
    torch.testing.assert_close(static, selected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows, selected, rtol=1e-5, atol=1e-6)
    for a, b in zip(static_grads, rows_grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    nothing = torch.zeros_like(mask)
    for selection_free in (False, True):
        monkeypatch.setattr(semantic, "_selection_is_free", lambda m: selection_free)
        none_masked = guidance.mtp.masked_loss(words, nothing, padding, visual, text_encoder.word_embeddings,
                                               text.tokens.ids)
        assert none_masked.item() == 0.0


def test_losses_equal_with_and_without_the_cpu_text_optimisations():
    """The caption cache changes nothing, bit for bit: every loss and every gradient is the
    uncached one. Trimming the masked re-encoding's padding changes only float rounding."""

    def losses_and_grads(cache: bool, trim: bool):
        encoder = load_text_encoder(cache=cache)
        encoder.trim_padding = trim
        torch.manual_seed(0)
        guidance = LanguageGuidance(8, 4, encoder, weights=(1.0, 1.0, 1.0))
        z_q = torch.randn(len(CAPTIONS), 8, 4, 4, requires_grad=True)
        results = []
        for _ in range(2):  # the second pass is served from the cache when it is on
            out = guidance(z_q, list(CAPTIONS), generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad(out.loss, [z_q, *guidance.parameters()], allow_unused=True)
            results.append((torch.stack([out.gsa, out.mtp, out.ras, out.loss]), grads))
        return results

    def same(a, b, exact: bool):
        if a is None or b is None:
            assert a is None and b is None
        elif exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    for trim in (False, True):
        reference = losses_and_grads(cache=False, trim=trim)
        for (losses, grads), (ref_losses, ref_grads) in zip(losses_and_grads(cache=True, trim=trim), reference):
            same(losses, ref_losses, exact=True)
            for grad, ref in zip(grads, ref_grads):
                same(grad, ref, exact=True)
    untrimmed = losses_and_grads(cache=False, trim=False)
    for (losses, grads), (ref_losses, ref_grads) in zip(losses_and_grads(cache=False, trim=True), untrimmed):
        torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
        for grad, ref in zip(grads, ref_grads):
            same(grad, ref, exact=False)
