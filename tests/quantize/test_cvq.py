"""ClusteredVectorQuantizer (CVQ-VAE): the re-anchoring formula by hand, the three anchor
choices against dense references written out here (the released code's N×K formulas), the
blocked paths against unblocked ones, and rank consistency over two processes."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lgvq.quantize import ClusteredVectorQuantizer
from lgvq.quantize.cvq import (
    anchor_weights,
    closest_features,
    clustered_contrastive_loss,
    softmax_sampled_features,
)

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


def dense_similarity(codebook, features, metric):
    """The release's d (N, K): −|f − e|² for "l2", cosine similarity for "cos"."""
    if metric == "cos":
        return F.normalize(features, dim=1) @ F.normalize(codebook, dim=1).t()
    return -(features[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)


def test_reanchoring_follows_the_formula():
    q = ClusteredVectorQuantizer(3, 2, anchor="closest", cvq_decay=0.9).train()
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [10.0, -10.0]])
    q.embedding.weight.data.copy_(codebook)
    features = torch.tensor([[0.1, 0.0], [0.0, 0.2], [-0.3, 0.0], [1.2, 0.9]])  # codes 0, 0, 0, 1
    out = q.quantize(features)

    assert out.indices.tolist() == [0, 0, 0, 1]
    p = 0.1 * torch.tensor([3.0, 1.0, 0.0]) / 4  # (1 − γ) · counts / N, from embed_prob = 0
    assert torch.allclose(q.embed_prob, p)
    alpha = torch.exp(-p * 3 * 10 / 0.1 - 1e-3)
    closest = features[[0, 3, 3]]  # nearest feature of each code, by hand
    expected = codebook * (1 - alpha[:, None]) + closest * alpha[:, None]
    assert torch.allclose(q.embedding.weight, expected, atol=1e-6)
    # the unused code jumps (α = e^-0.001) next to its closest feature; the busy one stays put
    assert math.isclose(alpha[2].item(), math.exp(-1e-3), rel_tol=1e-6)
    assert (q.embedding.weight[2] - features[3]).norm() < 0.02
    assert (q.embedding.weight[0] - codebook[0]).norm() < 1e-9  # α_0 = e^-22.5


def test_anchor_weights_known_values():
    # α = exp(−p·K·10/(1 − γ) − 1e-3) with K = 3, worked out by hand: γ = 0.99 gives exponents
    # −0.001, −0.301, −1500.001; γ = 0.9 and p = 0.02 gives −6.001.
    got = anchor_weights(torch.tensor([0.0, 1e-4, 0.5]), 0.99)
    torch.testing.assert_close(got, torch.tensor([0.9990004998, 0.7400777727, 0.0]), rtol=1e-6, atol=1e-12)
    got = anchor_weights(torch.tensor([0.02, 0.0, 0.0]), 0.9)
    torch.testing.assert_close(got[0], torch.tensor(0.0024762747), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_closest_equals_dense_argmax(metric, backend):
    codebook, features = torch.randn(7, 3), torch.randn(50, 3)
    dense = dense_similarity(codebook, features, metric).argmax(dim=0)  # release: sort along N, take last
    assert torch.equal(closest_features(codebook, features, metric, backend=backend), dense)


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_probrandom_is_reproducible_and_independent_of_block_size(metric):
    codebook, features = torch.randn(9, 4), torch.randn(33, 4)

    def draw(block_bytes):
        generator = torch.Generator().manual_seed(7)
        return softmax_sampled_features(codebook, features, metric, generator=generator, block_bytes=block_bytes)

    whole = draw(2**30)
    assert whole.shape == (9,) and whole.dtype == torch.int64
    assert bool(((whole >= 0) & (whole < 33)).all())
    assert torch.equal(draw(2**30), whole)
    assert torch.equal(draw(1), whole)  # one code per block: the N×K logits never exist


def test_probrandom_samples_the_softmax_of_negated_distances():
    codebook = torch.zeros(6000, 2)  # 6000 draws for one code
    features = torch.tensor([[0.0, 0.0], [0.5**0.5, 0.5**0.5], [0.0, 1.5**0.5]])  # dist² 0, 1, 1.5
    picks = softmax_sampled_features(codebook, features, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=3).float() / picks.numel()
    expected = torch.softmax(-torch.tensor([0.0, 1.0, 1.5]), dim=0)
    assert torch.allclose(freq, expected, atol=0.03)


def test_random_anchors_are_batch_rows():
    q = ClusteredVectorQuantizer(8, 3, anchor="random").train()
    q.embedding.weight.data.fill_(50.0)  # all codes unused: each lands on (almost) its anchor
    batch = torch.randn(20, 3)
    q.quantize(batch)
    alpha = anchor_weights(q.embed_prob, 0.99)[:, None]
    anchors = (q.embedding.weight - 50.0 * (1 - alpha)) / alpha
    # one code took every vector; the 7 unused ones must sit on distinct batch rows
    unused = q.embed_prob == 0
    for row in anchors[unused]:
        assert torch.isclose(batch, row, atol=1e-3).all(dim=1).any()


def test_a_non_finite_anchor_moves_no_code():
    q = ClusteredVectorQuantizer(4, 2, anchor="random").train()
    q.embedding.weight.data.fill_(50.0)
    batch = torch.tensor([[float("nan"), 0.0], [0.0, float("inf")], [float("-inf"), 1.0], [float("nan")] * 2])
    q.quantize(batch)  # unused codes have weight ~1 on their anchor, here always non-finite
    assert torch.equal(q.embedding.weight, torch.full((4, 2), 50.0))


def test_module_probrandom_reproducible_with_seed():
    features = torch.randn(40, 4)

    def run():
        torch.manual_seed(3)
        q = ClusteredVectorQuantizer(16, 4).train()
        q.quantize(features)
        return q.embedding.weight.detach().clone()

    assert torch.equal(run(), run())


def release_contrastive(codebook, features, metric):
    """CVQ release: sort d along N; positive = mean of the top N//K, negatives = the bottom N//2."""
    d = dense_similarity(codebook, features, metric)
    sorted_d, _ = d.sort(dim=0)
    n, k = d.shape
    pos = sorted_d[-max(1, n // k):, :].mean(dim=0, keepdim=True)
    neg = sorted_d[: n // 2, :]
    logits = torch.cat([pos, neg], dim=0).t() / 0.07
    return F.cross_entropy(logits, torch.zeros(k, dtype=torch.int64))


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_contrastive_loss_matches_release_blocked(metric):
    features = torch.randn(24, 3)
    codebook = torch.randn(5, 3, requires_grad=True)
    reference = codebook.detach().clone().requires_grad_(True)
    loss = clustered_contrastive_loss(codebook, features, metric, block_bytes=1)  # one code per block
    expected = release_contrastive(reference, features, metric)
    loss.backward()
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(codebook.grad, reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("contrastive", [False, True])
def test_backward_uses_the_codebook_of_the_forward(metric, contrastive):
    """Re-anchoring rewrites the codebook in place after the forward; backward still works and
    differentiates the loss at the codebook the forward used."""
    q = ClusteredVectorQuantizer(6, 3, metric=metric, contrastive=contrastive).train()
    q.embedding.weight.data.normal_()
    used = q.embedding.weight.detach().clone().requires_grad_(True)
    z = torch.randn(10, 3, requires_grad=True)
    out = q.quantize(z)
    (out.z_q.sum() + out.loss).backward()
    assert not torch.equal(q.embedding.weight.detach(), used.detach())  # re-anchored

    flat = F.normalize(z.detach(), dim=-1) if metric == "cos" else z.detach()
    codes = F.normalize(used, dim=-1) if metric == "cos" else used
    e = codes[out.indices]
    expected = 0.25 * F.mse_loss(flat, e.detach()) + F.mse_loss(flat, e)
    if contrastive:
        expected = expected + release_contrastive(used, flat, metric)
    expected.backward()
    assert torch.allclose(q.embedding.weight.grad, used.grad, atol=1e-5)


def test_first_batch_only_reanchors_once():
    q = ClusteredVectorQuantizer(8, 2, first_batch_only=True).train()
    before = q.embedding.weight.detach().clone()
    q.quantize(torch.randn(12, 2))
    after_first = q.embedding.weight.detach().clone()
    q.quantize(torch.randn(12, 2))
    assert not torch.equal(after_first, before)
    assert torch.equal(q.embedding.weight.detach(), after_first)
    resumed = ClusteredVectorQuantizer(8, 2, first_batch_only=True)
    resumed.load_state_dict(q.state_dict())  # a resumed run is past its first batch
    resumed.train().quantize(torch.randn(12, 2))
    assert torch.equal(resumed.embedding.weight.detach(), after_first)


def test_eval_mode_leaves_the_codebook_alone():
    q = ClusteredVectorQuantizer(8, 2, contrastive=True).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(5, 2)
    out = q.quantize(z)
    # no contrastive term outside training (as released): (1 + beta) · mse
    assert torch.allclose(out.loss, 1.25 * F.mse_loss(z, q.embedding.weight[out.indices]))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_release_checkpoint_loads_strictly():
    q = ClusteredVectorQuantizer(4, 2)
    state = {"embedding.weight": torch.randn(4, 2), "embed_prob": torch.rand(4)}
    q.load_state_dict(state, strict=True)
    assert torch.equal(q.embed_prob, state["embed_prob"])


@pytest.mark.parametrize(
    "kwargs,err,msg",
    [
        (dict(anchor="nearest"), ValueError, "anchor must be one of"),
        (dict(cvq_decay=1.0), ValueError, "cvq_decay"),
        (dict(ema=True), ValueError, "ema=True"),
        (dict(legacy=True), ValueError, "legacy=True"),
    ],
)
def test_bad_construction(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        ClusteredVectorQuantizer(8, 2, **kwargs)


def _rank_step(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG streams and batches per rank
        q = ClusteredVectorQuantizer(16, 3).train()
        q.embedding.weight.data.copy_(torch.arange(48.0).view(16, 3) / 48)  # same start everywhere
        q.quantize(torch.randn(10, 3))
        results[rank] = q.embedding.weight.detach().clone()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes: ~6 s of start-up
def test_ranks_keep_identical_codebooks(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank_step, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], torch.arange(48.0).view(16, 3) / 48)


@pytest.mark.parametrize("fn", [softmax_sampled_features, clustered_contrastive_loss, closest_features])
def test_anchor_functions_validate_inputs(fn):
    with pytest.raises(ValueError, match="code dimension"):
        fn(torch.randn(4, 3), torch.randn(10, 2))
    with pytest.raises(ValueError, match="metric"):
        fn(torch.randn(4, 3), torch.randn(10, 3), "dot")
