"""relation_alignment_loss (LG-VQ's Lras): hand-computed values, the torch reference, and the
Triton kernels against it (TRITON_INTERPRET=1 on CPU, tiny shapes; large shapes on GPU)."""

import math

import pytest
import torch

import lgvq.ops.backend as backend_module
import lgvq.ops.relation as relation_module
from lgvq.checks import strict_mode
from lgvq.ops.relation import relation_alignment_loss, relation_alignment_reference

def make_inputs(B, L, M, Dt, *, dtype=torch.float32, device="cpu", lengths=None):
    """Words are noisy copies of random tokens, so every word's best token wins by a clear
    margin and both backends pick the same one; words may share a token (always when L > M).
    ``lengths`` (one per caption) pads the tail of each caption."""
    tokens = torch.randn(B, M, Dt, device=device)
    pick = torch.randint(M, (B, L), device=device)
    words = tokens.gather(1, pick.unsqueeze(-1).expand(-1, -1, Dt)) + 0.3 * torch.randn(B, L, Dt, device=device)
    codes = torch.randn(B, M, Dt, device=device)
    mask = torch.ones(B, L, device=device)
    for b, n in enumerate(lengths or []):
        mask[b, n:] = 0
    return words.to(dtype), mask, tokens.to(dtype), codes.to(dtype)


def loss_and_grad(words, mask, tokens, codes, backend):
    codes = codes.detach().clone().requires_grad_(True)
    loss = relation_alignment_loss(words, mask, tokens, codes, backend=backend)
    loss.backward()
    return loss.detach(), codes.grad


def assert_triton_matches_reference(words, mask, tokens, codes, *, rtol=1e-5, grad_rtol=1e-4):
    loss_t, grad_t = loss_and_grad(words, mask, tokens, codes, "triton")
    loss_r, grad_r = loss_and_grad(words, mask, tokens, codes, "torch")
    assert loss_t.dtype == torch.float32 and loss_t.dim() == 0
    assert grad_t.dtype == codes.dtype and grad_t.shape == codes.shape
    torch.testing.assert_close(loss_t, loss_r.float(), rtol=rtol, atol=1e-7)
    scale = grad_r.float().abs().max().item()
    torch.testing.assert_close(grad_t.float(), grad_r.float(), rtol=grad_rtol, atol=grad_rtol * scale)


BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


# --- hand computations (both backends) ----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_padded_caption(backend):
    # w0 ∥ t0 (v = 1), w1 is closest to t2 (v = cos 45°), w2 is padding.
    words = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    tokens = torch.tensor([[[3.0, 0.0], [0.0, -1.0], [1.0, 1.0]]])
    codes = torch.tensor([[[2.0, 0.0], [7.0, -3.0], [1.0, 1.0]]], requires_grad=True)
    # Ĝ0 = (1, 0), Ĝ1 = (1, 1)/√2, Ĝ2 = 0; Q = diag(1, 1, 0) (orthogonal words), so
    # P − Q has two non-zero entries, both 1/√2: loss = 2 · ½ / 9.
    loss = relation_alignment_loss(words, mask, tokens, codes, backend=backend)
    assert loss.item() == pytest.approx(1 / 9, rel=1e-6)
    # Off-diagonal term (4/9)(Ĝ0·Ĝ1)Ĝ1 projected orthogonally to Ĝ0, over |u0| = 2, times v = 1
    # gives (0, 1/9) at token 0; symmetrically (1/9, −1/9) at token 2; token 1 is unused.
    loss.backward()
    expected = torch.tensor([[[0.0, 1 / 9], [0.0, 0.0], [1 / 9, -1 / 9]]])
    torch.testing.assert_close(codes.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_negative_similarity_flips_the_code(backend):
    # w1 is negatively correlated with every token: its best is t1 with v = −1/√5, so its
    # Ĝ is −code even though both words pick the same code vector (1, 0).
    words = torch.tensor([[[1.0, 0.0], [-2.0, -1.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    codes = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # P off-diagonal = −1, Q off-diagonal = Ŵ0·Ŵ1 = −2/√5.
    expected = 2 * (-1 + 2 / math.sqrt(5)) ** 2 / 4
    loss = relation_alignment_loss(words, mask, tokens, codes, backend=backend)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# --- the reference ------------------------------------------------------------------------


def test_reference_gradcheck_float64():
    words, mask, tokens, codes = make_inputs(2, 4, 5, 3, dtype=torch.float64, lengths=[4, 2])
    codes.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: relation_alignment_reference(words, mask, tokens, z), (codes,))


def test_reference_float64_loss_stays_float64():
    words, mask, tokens, codes = make_inputs(1, 3, 4, 5, dtype=torch.float64)
    assert relation_alignment_loss(words, mask, tokens, codes, backend="torch").dtype == torch.float64


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.uint8, torch.float32, torch.float16])
def test_mask_dtypes_agree(mask_dtype):
    words, mask, tokens, codes = make_inputs(2, 5, 6, 8, lengths=[3, 5])
    expected = relation_alignment_loss(words, mask, tokens, codes, backend="torch")
    got = relation_alignment_loss(words, mask.to(mask_dtype), tokens, codes, backend="torch")
    assert torch.equal(got, expected)


def test_auto_on_cpu_runs_the_reference(monkeypatch):
    """CPU tensors take the torch path under ``auto``, even where the interpreter is on."""
    calls = []

    def spy(*args):
        calls.append(args)
        return relation_alignment_reference(*args)

    def no_kernel(*args):
        raise AssertionError("backend='auto' launched the Triton kernels on CPU tensors")

    monkeypatch.setattr(relation_module, "relation_alignment_reference", spy)
    monkeypatch.setattr(relation_module, "relation_triton", no_kernel)
    words, mask, tokens, codes = make_inputs(2, 5, 6, 8)
    loss = relation_alignment_loss(words, mask, tokens, codes)
    assert len(calls) == 1 and torch.equal(loss, relation_alignment_reference(words, mask, tokens, codes))


# --- properties, on both backends ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_codes_receive_gradient(backend):
    words, mask, tokens, codes = make_inputs(2, 5, 13, 24)
    for t in (words, tokens, codes):
        t.requires_grad_(True)
    relation_alignment_loss(words, mask, tokens, codes, backend=backend).backward()
    assert words.grad is None and tokens.grad is None
    assert codes.grad is not None and codes.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_words_contribute_nothing(backend):
    # Padding gives zero rows and columns of P and Q: the summed error equals that of the
    # caption without its padding, whatever the padded words' features are.
    words, mask, tokens, codes = make_inputs(2, 7, 13, 24, lengths=[4, 4])
    noisy = words.clone()
    noisy[:, 4:] = 100 * torch.randn_like(noisy[:, 4:])
    loss_full, grad_full = loss_and_grad(noisy, mask, tokens, codes, backend)
    loss_trim, grad_trim = loss_and_grad(words[:, :4], mask[:, :4], tokens, codes, backend)
    torch.testing.assert_close(loss_full * 7**2, loss_trim * 4**2, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_full * 7**2, grad_trim * 4**2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_give_finite_loss_and_gradient(backend):
    # A zero word matches every token with v = 0, so G = 0; a zero code makes |G| = 0 too.
    # The eps clamp maps both to Ĝ = 0 instead of NaN.
    words, mask, tokens, codes = make_inputs(2, 5, 13, 24)
    words[0, 1] = 0
    codes[1, :] = 0
    loss, grad = loss_and_grad(words, mask, tokens, codes, backend)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_pick_the_lowest_token(backend):
    # Tokens 3 and 20 are identical and every word copies them (exact tie, in different
    # token tiles of the kernel): the gradient must land on token 3 only.
    words, mask, tokens, codes = make_inputs(1, 5, 37, 24)
    tokens[0, 20] = tokens[0, 3]
    words[:] = tokens[0, 3]
    words[0, 1] = tokens[0, 7]  # a second matched token, so that P is not all ones
    _, grad = loss_and_grad(words, mask, tokens, codes, backend)
    assert grad[0, 3].abs().sum() > 0 and grad[0, 20].abs().sum() == 0


# --- Triton against the reference (interpreter on CPU) ------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize(
    "B, L, M, Dt, lengths",
    [
        (1, 5, 13, 24, None),  # single caption, nothing a power of two
        (2, 7, 37, 40, [7, 3]),  # several token tiles and Dt tiles, one padded caption
        (2, 20, 13, 24, [20, 11]),  # two word blocks; L > M forces shared argmaxes
        (3, 16, 16, 16, [16, 1, 9]),  # exact tile sizes; a one-word caption
    ],
)
def test_triton_matches_reference(B, L, M, Dt, lengths, device):
    assert_triton_matches_reference(*make_inputs(B, L, M, Dt, device=device, lengths=lengths))


@pytest.mark.triton
def test_triton_tiny_codes_follow_the_eps_clamp(device):
    # |u| = |v| |Z[a]| < eps in caption 0: Ĝ = u/eps (norm < 1) and the normalisation's
    # projection term drops out, exactly as F.normalize's clamp_min behaves.
    words, mask, tokens, codes = make_inputs(2, 7, 13, 24, device=device)
    codes[0] *= 1e-14
    assert_triton_matches_reference(words, mask, tokens, codes)


@pytest.mark.triton
def test_triton_non_contiguous_inputs(device):
    words, mask, tokens, codes = make_inputs(2, 7, 37, 40, device=device, lengths=[5, 7])
    words = words.transpose(1, 2).contiguous().transpose(1, 2)  # Dt-major storage
    tokens = torch.cat([tokens, tokens], dim=2)[:, :, ::2]  # strided last axis
    codes = codes.permute(1, 0, 2).contiguous().permute(1, 0, 2)  # batch not outermost
    assert not (words.is_contiguous() or tokens.is_contiguous() or codes.is_contiguous())
    assert_triton_matches_reference(words, mask, tokens, codes)


@pytest.mark.triton
@pytest.mark.parametrize("words_dtype", [torch.float16, torch.float32])
def test_triton_half_precision_inputs(words_dtype, device):
    # fp16 codes and tokens with fp16 or fp32 words (mixed operands meet in fp32). The
    # reference upcasts the same values, and accumulation is fp32 on both sides.
    words, mask, tokens, codes = make_inputs(2, 7, 37, 40, dtype=torch.float16, device=device, lengths=[7, 4])
    assert_triton_matches_reference(words.to(words_dtype), mask, tokens, codes, rtol=1e-4, grad_rtol=2e-3)


@pytest.mark.triton
def test_triton_scales_gradient_by_upstream(device):
    words, mask, tokens, codes = make_inputs(1, 5, 13, 24, device=device)
    codes.requires_grad_(True)
    (3.0 * relation_alignment_loss(words, mask, tokens, codes, backend="triton")).backward()
    _, grad = loss_and_grad(words, mask, tokens, codes, "torch")
    torch.testing.assert_close(codes.grad, 3.0 * grad, rtol=1e-4, atol=1e-9)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda a: {**a, "words": a["words"].tolist()}, TypeError, "words must be a torch.Tensor"),
        (lambda a: {**a, "words": a["words"][0]}, ValueError, "words must have 3 dimensions"),
        (lambda a: {**a, "words": a["words"].long()}, TypeError, "words must have dtype"),
        (lambda a: {**a, "word_mask": a["word_mask"][:, :3]}, ValueError, r"word_mask must have shape \(B, L\)"),
        (lambda a: {**a, "word_mask": 2 * a["word_mask"]}, ValueError, "word_mask must hold only 1"),
        (lambda a: {**a, "word_mask": a["word_mask"].to(torch.complex64)}, TypeError, "word_mask must have dtype"),
        (lambda a: {**a, "tokens": a["tokens"][..., :5]}, ValueError, "tokens must have shape"),
        (lambda a: {**a, "tokens": a["tokens"][:1]}, ValueError, "tokens must have shape"),
        (lambda a: {**a, "codes": a["codes"][:, :4]}, ValueError, "codes must have the shape of tokens"),
        (lambda a: {**a, "codes": a["codes"].unsqueeze(0)}, ValueError, "codes must have 3 dimensions"),
        (lambda a: {**a, "tokens": a["tokens"].index_fill(1, torch.tensor([2]), float("nan"))},
         ValueError, "tokens contains NaN or Inf"),
        (lambda a: {**a, "codes": a["codes"].index_fill(2, torch.tensor([0]), float("inf"))},
         ValueError, "codes contains NaN or Inf"),
        (lambda a: {k: v[:0] for k, v in a.items()}, ValueError, "words is empty"),
        (lambda a: {**a, "tokens": a["tokens"][:, :0], "codes": a["codes"][:, :0]}, ValueError, "tokens is empty"),
        (lambda a: {**a, "backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_inputs_raise(mutate, error, message):
    words, mask, tokens, codes = make_inputs(2, 6, 7, 8)
    args = mutate({"words": words, "word_mask": mask, "tokens": tokens, "codes": codes})
    with strict_mode(), pytest.raises(error, match=message):  # value checks: strict mode only
        relation_alignment_loss(**args)


@pytest.mark.triton
def test_triton_rejects_float64():
    words, mask, tokens, codes = make_inputs(1, 3, 4, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64 inputs are supported by backend='torch' only"):
        relation_alignment_loss(words, mask, tokens, codes, backend="triton")


@pytest.mark.triton
def test_triton_rejects_too_many_words():
    words, mask, tokens, codes = make_inputs(1, 129, 4, 16)
    with pytest.raises(ValueError, match="at most 128"):
        relation_alignment_loss(words, mask, tokens, codes, backend="triton")


@pytest.mark.triton
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRET", False)
    words, mask, tokens, codes = make_inputs(1, 3, 4, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        relation_alignment_loss(words, mask, tokens, codes, backend="triton")


# --- GPU: large shapes, half precision, determinism ---------------------------------------


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize(
    "dtype, rtol, grad_rtol", [(torch.float32, 1e-5, 1e-4), (torch.float16, 1e-4, 2e-3), (torch.bfloat16, 1e-4, 2e-2)]
)
def test_gpu_large_shapes(dtype, rtol, grad_rtol):
    lengths = [77, 30, 12, 1]
    inputs = make_inputs(4, 77, 1024, 768, dtype=dtype, device="cuda", lengths=lengths)
    assert_triton_matches_reference(*inputs, rtol=rtol, grad_rtol=grad_rtol)


@pytest.mark.gpu
@pytest.mark.triton
def test_gpu_paper_shape_and_deterministic_gradient():
    inputs = make_inputs(32, 30, 256, 512, device="cuda", lengths=list(range(1, 31)) + [30, 30])
    assert_triton_matches_reference(*inputs)
    first = loss_and_grad(*inputs, "triton")
    second = loss_and_grad(*inputs, "triton")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
