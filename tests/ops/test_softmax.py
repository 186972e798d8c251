"""Codebook softmax ops (IBQ, entropy sums, LFQ) against dense oracles written here.

Oracles, in our words:
- IBQ (Open-MAGVIT2's IndexPropagationQuantize): logits = z·Eᵀ (on unit vectors for cos,
  -|z - e|² for l2) divided by τ; soft = softmax(logits); idx = argmax; hard = one-hot(idx);
  z_q = (hard - soft.detach() + soft)·E.
- Entropy (MAGVIT-2's entropy loss, Open-MAGVIT2's compute_entropy_loss): probs =
  softmax(logits/τ); log_probs = log_softmax(logits/τ + 1e-5); avg = mean of probs over rows;
  avg_entropy = -Σ avg·log(avg + 1e-5); sample_entropy = mean over rows of -Σ probs·log_probs.
- LFQ (Open-MAGVIT2's LFQ): code k has coordinate j = +1 if bit j of k is set, else -1;
  logits = 2·x·codesᵀ; the entropy above at τ = 0.01.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import lgvq.ops.softmax as softmax_mod
from bench.common import peak_extra_memory
from lgvq.ops import (
    codebook_entropy,
    codebook_softmax_sums,
    entropy_from_sums,
    index_backprop_quantize,
    lfq_entropy,
    lfq_softmax_sums,
)

EPS = 1e-5
#: The torch path's real tiling, before the autouse fixture shrinks it.
REAL_TILE_BYTES, REAL_CODE_TILE = softmax_mod.TILE_BYTES, softmax_mod.CODE_TILE
# (N, K, d): N = 1, K not a multiple of the test tile (16 codes), d not a power of two.
SHAPES = [(1, 5, 3), (7, 45, 17), (33, 130, 20)]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of 16 codes × at most 8 rows, so every shape here crosses several of both."""
    monkeypatch.setattr(softmax_mod, "CODE_TILE", 16)
    monkeypatch.setattr(softmax_mod, "TILE_BYTES", 16 * 8 * 8)


def dense_logits(z, codebook, metric):
    if metric == "cos":
        z, codebook = F.normalize(z, dim=-1), F.normalize(codebook, dim=-1)
    if metric == "l2":
        return -(z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(-1))
    return z @ codebook.t()


def dense_ibq(z, codebook, metric, temperature):
    flat = z.reshape(-1, z.shape[-1])
    soft = torch.softmax(dense_logits(flat, codebook, metric) / temperature, dim=-1)
    idx = soft.argmax(dim=-1)
    hard = F.one_hot(idx, codebook.shape[0]).to(soft.dtype)
    one_hot = hard - soft.detach() + soft
    codes = F.normalize(codebook, dim=-1) if metric == "cos" else codebook
    return (one_hot @ codes).view(z.shape), idx.view(z.shape[:-1])


def dense_entropy(logits, temperature):
    probs = torch.softmax(logits / temperature, dim=-1)
    log_probs = torch.log_softmax(logits / temperature + EPS, dim=-1)
    avg = probs.mean(dim=0)
    avg_entropy = -(avg * torch.log(avg + EPS)).sum()
    sample_entropy = (-(probs * log_probs).sum(dim=-1)).mean()
    return sample_entropy, avg_entropy


def lfq_codebook(bits, dtype=torch.float64):
    k = torch.arange(2**bits).unsqueeze(1)
    return ((k >> torch.arange(bits)) & 1).to(dtype) * 2 - 1


def grads(fn, *inputs, weights):
    """Outputs of fn and the gradients of Σ w·output (random w per output) to the inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    total = sum((o.double() * w).sum() for o, w in zip(outs, weights) if o.is_floating_point())
    return [o.detach() for o in outs], torch.autograd.grad(total, leaves)


def fp32_tolerance(z, codebook, metric, temperature):
    """fp32 logits carry an error of about u·|l| (u = 2^-24 per operation, a few operations);
    the softmax passes it on to p and to the gradients relatively."""
    return 1e-5 + 1e-6 * dense_logits(z.double(), codebook.double(), metric).abs().max().item() / temperature


def assert_close(got, want, rtol, floor=1e-2):
    """|got - want| ≤ rtol·max(|want|, floor): peaked and flat softmaxes have gradients of ~0
    made of O(1/τ) terms, which fp32 resolves to about u/τ (floor ~ 1/τ there)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().clamp_min(floor)
    assert (got - want).abs().max() <= rtol * scale, f"max error {(got - want).abs().max():.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["dot", "cos", "l2"])
@pytest.mark.parametrize("temperature", [1.0, 0.05, 30.0])  # IBQ's own, peaked, flat
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_ibq_matches_dense(n, k, d, metric, temperature, dtype):
    z, codebook = torch.randn(n, d, dtype=dtype), torch.randn(k, d, dtype=dtype)
    rtol = 1e-10 if dtype == torch.float64 else fp32_tolerance(z, codebook, metric, temperature)
    weights = [torch.randn(n, d)]
    got, got_g = grads(lambda a, b: index_backprop_quantize(a, b, metric=metric, temperature=temperature,
                                                            backend="torch")[:1], z, codebook, weights=weights)
    want, want_g = grads(lambda a, b: dense_ibq(a, b, metric, temperature)[:1], z.double(), codebook.double(),
                         weights=weights)
    idx = index_backprop_quantize(z, codebook, metric=metric, temperature=temperature, backend="torch")[1]
    assert torch.equal(idx, dense_ibq(z, codebook, metric, temperature)[1])
    codes = F.normalize(codebook, dim=-1) if metric == "cos" else codebook
    assert torch.equal(got[0], codes[idx])  # the value is exactly the chosen code
    for g, w in zip(got_g, want_g):
        assert_close(g, w, rtol)


def test_ibq_value_and_ties_are_exact():
    """Duplicate codes in different tiles and inside one tile, integer inputs (exact logits):
    the lowest index wins, as torch.argmax does."""
    codebook = torch.randint(-3, 4, (40, 6)).float()
    codebook[33] = codebook[2]  # a later tile
    codebook[3] = codebook[2]  # the same tile
    z = torch.stack([codebook[2], codebook[2] * 2, torch.zeros(6)])  # the last: every logit ties
    z_q, idx = index_backprop_quantize(z, codebook, backend="torch")
    assert torch.equal(idx, (z @ codebook.t()).argmax(dim=1))
    assert idx[2] == 0
    assert torch.equal(z_q, codebook[idx])


def test_ibq_batched_non_contiguous_fp16_input():
    z = torch.randn(2, 5, 3, 12).transpose(1, 3)  # (2, 12, 3, 5), non-contiguous, d = 5
    codebook = torch.randn(37, 5)
    weights = [torch.randn(z.shape)]
    got, got_g = grads(lambda a, b: index_backprop_quantize(a, b, backend="torch")[:1], z, codebook, weights=weights)
    want, want_g = grads(lambda a, b: dense_ibq(a, b, "dot", 1.0)[:1], z.double(), codebook.double(), weights=weights)
    assert got[0].shape == z.shape
    for g, w in zip(got_g, want_g):
        assert_close(g, w, 1e-5)
    half, _ = index_backprop_quantize(z.half(), codebook, backend="torch")
    assert half.dtype == torch.float16


def test_ibq_frozen_codebook_gives_only_z_a_gradient():
    z, codebook = torch.randn(6, 4, requires_grad=True), torch.randn(20, 4)
    z_q, _ = index_backprop_quantize(z, codebook, backend="torch")
    z_q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["dot", "cos", "l2"])
@pytest.mark.parametrize("temperature", [0.01, 1.0, 50.0])  # MAGVIT-2's peaked default, moderate, flat
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_codebook_entropy_matches_dense(n, k, d, metric, temperature, dtype):
    z, codebook = 0.3 * torch.randn(n, d, dtype=dtype), 0.3 * torch.randn(k, d, dtype=dtype)
    rtol = 1e-10 if dtype == torch.float64 else fp32_tolerance(z, codebook, metric, temperature)
    weights = [torch.randn(()), torch.randn(())]
    got, got_g = grads(lambda a, b: codebook_entropy(a, b, metric=metric, temperature=temperature, backend="torch"),
                       z, codebook, weights=weights)
    want, want_g = grads(lambda a, b: dense_entropy(dense_logits(a, b, metric), temperature), z.double(),
                         codebook.double(), weights=weights)
    floor = 1e-2 * max(1.0, 1.0 / temperature) if dtype == torch.float32 else 1e-2
    for g, w in zip(list(got) + list(got_g), list(want) + list(want_g)):
        assert_close(g, w, rtol, floor)


def test_entropy_of_a_collapsed_codebook():
    """Every code equal: every row's softmax is uniform, both entropies are log K."""
    z, codebook = torch.randn(9, 4), torch.ones(21, 4)
    sample, avg = codebook_entropy(z, codebook, backend="torch")
    want_sample, want_avg = dense_entropy(dense_logits(z.double(), codebook.double(), "dot"), 0.01)
    assert_close(sample, want_sample, 1e-5)
    assert_close(avg, want_avg, 1e-5)


@pytest.mark.parametrize("n,bits", [(1, 1), (5, 4), (17, 7), (40, 10)])
def test_lfq_entropy_matches_dense(n, bits):
    x = 0.05 * torch.randn(n, bits)
    weights = [torch.randn(()), torch.randn(())]
    got, (got_g,) = grads(lambda a: lfq_entropy(a, backend="torch"), x, weights=weights)
    want, (want_g,) = grads(lambda a: dense_entropy(2 * a @ lfq_codebook(bits).t(), 0.01), x.double(),
                            weights=weights)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-5)
    assert_close(got_g, want_g, 2e-5)


def test_lfq_rows_are_every_leading_index():
    """(batch, tokens, codebooks, bits): every (batch, token, codebook) triple is one row."""
    x = 0.05 * torch.randn(2, 3, 2, 5)
    got = lfq_entropy(x, backend="torch")
    want = dense_entropy(2 * x.double().reshape(-1, 5) @ lfq_codebook(5).t(), 0.01)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-5)


def test_sums_add_across_row_shards():
    """Two shards' sums, added (as an all-reduce would), give the whole batch's entropies and
    gradients: the contract the distributed faces rely on."""
    z, codebook = torch.randn(11, 6), torch.randn(30, 6)
    weights = [torch.randn(()), torch.randn(())]

    def sharded(a, b):
        parts = [codebook_softmax_sums(part, b, temperature=0.1, backend="torch") for part in (a[:4], a[4:])]
        return entropy_from_sums(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1], a.shape[0])

    got, got_g = grads(sharded, z, codebook, weights=weights)
    want, want_g = grads(lambda a, b: dense_entropy(a @ b.t(), 0.1), z.double(), codebook.double(), weights=weights)
    for g, w in zip(list(got) + list(got_g), list(want) + list(want_g)):
        assert_close(g, w, 2e-5)


def test_lfq_sums_have_one_entry_per_code():
    entropy_sum, sums = lfq_softmax_sums(torch.randn(6, 4), backend="torch")
    assert sums.shape == (16,) and entropy_sum.shape == ()
    assert_close(sums.sum(), torch.tensor(6.0), 1e-6)  # each row's probabilities sum to one


def test_gradcheck_fp64():
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    codebook = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    for metric in ("dot", "cos", "l2"):
        assert torch.autograd.gradcheck(
            lambda a, b: codebook_entropy(a, b, metric=metric, temperature=0.5, backend="torch"), (z, codebook))
    # IBQ's value is piecewise constant: check its soft path, softmax(l)·sg(E), whose gradient
    # to z (and to the l2 bias) is the true one; the codebook's is checked against the oracle above.
    bias = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: softmax_mod.softmax_attend(a, codebook.detach(), b, 0.7, "torch")[0], (z, bias))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: lfq_entropy(a, temperature=0.5, backend="torch"), (x,))


def test_compiles_fullgraph():
    z, codebook = torch.randn(2, 4, 6, requires_grad=True), torch.randn(40, 6, requires_grad=True)

    def step(a, b):
        z_q, _ = index_backprop_quantize(a, b, backend="torch")
        sample, avg = codebook_entropy(a, b, metric="l2", backend="torch")
        lfq_sample, lfq_avg = lfq_entropy(a[..., :5], backend="torch")
        return (z_q * z_q).sum() + sample - avg + lfq_sample - lfq_avg

    eager = step(z, codebook)
    eager_grads = torch.autograd.grad(eager, (z, codebook))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(z, codebook)
    compiled_grads = torch.autograd.grad(compiled, (z, codebook))
    assert_close(compiled, eager, 1e-6)
    for g, w in zip(compiled_grads, eager_grads):
        assert_close(g, w, 1e-6)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: index_backprop_quantize(torch.randn(3, 4), torch.randn(5, 3)), "code dimension"),
        (lambda: index_backprop_quantize(torch.randn(3, 4), torch.randn(5, 4), metric="cosine"), "metric"),
        (lambda: codebook_entropy(torch.randn(3, 4), torch.randn(5, 4), temperature=0.0), "temperature"),
        (lambda: lfq_entropy(torch.randn(3, 40)), "bits"),
        (lambda: codebook_entropy(torch.randn(3, 4), torch.randn(5, 4), backend="cuda"), "backend"),
    ],
)
def test_bad_input_is_rejected(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------- Triton kernels (interpreter on CPU)


def _both_backends(fn, *inputs, weights):
    return [grads(lambda *a: fn(*a, backend=b), *inputs, weights=weights) for b in ("triton", "torch")]


def _assert_same(got, want, rtol):
    (out, out_g), (ref, ref_g) = got, want
    for g, w in zip(list(out) + list(out_g), list(ref) + list(ref_g)):
        assert_close(g, w, rtol)


def _ibq_entropy_step(n, k, d):
    z, codebook = (0.1 * torch.randn(n, d)).requires_grad_(), (0.1 * torch.randn(k, d)).requires_grad_()

    def step():
        z_q, _ = index_backprop_quantize(z, codebook, backend="torch")
        sample, avg = codebook_entropy(z, codebook, backend="torch")
        (z_q.square().sum() + sample - avg).backward()
    return step


def _lfq_step(n, k, d):
    x = (0.05 * torch.randn(n, k.bit_length() - 1)).requires_grad_()

    def step():
        sample, avg = lfq_entropy(x, backend="torch")
        (sample - avg).backward()
    return step


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("make_step", [_ibq_entropy_step, _lfq_step], ids=["ibq+entropy", "lfq"])
def test_torch_path_holds_a_bounded_tile(make_step, monkeypatch):
    """Forward + backward at N = 1,024, K = 2^16 with the real tiles: one fp32 N×K matrix is
    256 MiB, 64 tiles. The passes hold two tiles per worker; allow a quarter of N×K, which a
    kept or materialised N×K, autograd saving the tiles, or freed tiles the heap keeps (gigabytes
    when every tile was a fresh allocation on two threads) all exceed."""
    monkeypatch.setattr(softmax_mod, "TILE_BYTES", REAL_TILE_BYTES)
    monkeypatch.setattr(softmax_mod, "CODE_TILE", REAL_CODE_TILE)
    make_step(64, 2**12, 8)()  # first calls load modules and start the workers: not the op's memory
    n, k = 1024, 2**16
    step = make_step(n, k, 8)
    growth = peak_extra_memory(step, torch.device("cpu"))
    assert growth < n * k * 4 // 4, f"{growth / 2**20:.0f} MiB"


@pytest.mark.triton
@pytest.mark.parametrize("metric", ["dot", "cos", "l2"])
@pytest.mark.parametrize("n,k,d", [(1, 5, 3), (20, 45, 17), (33, 70, 40)])
def test_triton_ibq_matches_torch(n, k, d, metric, device):
    z, codebook = torch.randn(n, d, device=device), torch.randn(k, d, device=device)
    weights = [torch.randn(n, d, device=device)]
    got, want = _both_backends(lambda a, b, backend: index_backprop_quantize(a, b, metric=metric, backend=backend)[:1],
                               z, codebook, weights=weights)
    _assert_same(got, want, 1e-4)
    idx = index_backprop_quantize(z, codebook, metric=metric, backend="triton")[1]
    assert torch.equal(idx, index_backprop_quantize(z, codebook, metric=metric, backend="torch")[1])


@pytest.mark.triton
def test_triton_ibq_ties_pick_lowest_index(device):
    codebook = torch.randint(-3, 4, (40, 6), device=device).float()
    codebook[33] = codebook[2]  # a later code tile (the interpreter's hold 16 codes)
    codebook[3] = codebook[2]  # the same tile
    z = torch.stack([codebook[2], torch.zeros(6, device=device)])  # the last: every logit ties
    _, idx = index_backprop_quantize(z, codebook, backend="triton")
    assert idx.tolist() == [2, 0]


@pytest.mark.triton
@pytest.mark.parametrize("metric,temperature", [("dot", 0.01), ("l2", 0.01), ("cos", 1.0), ("dot", 50.0)])
@pytest.mark.parametrize("n,k,d", [(1, 5, 3), (20, 45, 17)])
def test_triton_codebook_entropy_matches_torch(n, k, d, metric, temperature, device):
    z, codebook = 0.3 * torch.randn(n, d, device=device), 0.3 * torch.randn(k, d, device=device)
    weights = [torch.randn((), device=device), torch.randn((), device=device)]
    got, want = _both_backends(
        lambda a, b, backend: codebook_entropy(a, b, metric=metric, temperature=temperature, backend=backend),
        z, codebook, weights=weights)
    _assert_same(got, want, 1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("n,bits", [(1, 3), (19, 6)])
def test_triton_lfq_entropy_matches_torch(n, bits, device):
    x = 0.05 * torch.randn(n, 2, bits, device=device).transpose(0, 1)  # non-contiguous rows
    weights = [torch.randn((), device=device), torch.randn((), device=device)]
    got, want = _both_backends(lambda a, backend: lfq_entropy(a, backend=backend), x, weights=weights)
    _assert_same(got, want, 1e-4)
