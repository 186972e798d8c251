"""lgvq.compat.VectorQuantize against vector-quantize-pytorch itself (the oracle, installed by
the test extra): the same codebook state gives the same quantized values, indices, loss,
gradients and codebook after one EMA step, and vqp checkpoints load."""

import pytest
import torch

import lgvq.compat.codebook as codebook_module
from lgvq.compat import VectorQuantize

from .vqp_comparison import CODEBOOK_CASES, assert_matches, step

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch (the oracle) is not installed")

CASES = {
    **CODEBOOK_CASES,
    "frozen codebook": dict(ema_update=False),
    "a codebook per head": dict(heads=2, codebook_dim=3, separate_codebook_per_head=True, threshold_ema_dead_code=2.0),
    "heads sharing a codebook": dict(heads=2, codebook_dim=3, threshold_ema_dead_code=2.0),
    "heads, projected": dict(heads=2, codebook_dim=4, separate_codebook_per_head=True),
    "frozen by the constructor": dict(freeze_codebook=True, threshold_ema_dead_code=2.0),
}
LAYOUTS = {
    "channel_last": (dict(), (3, 10, 6)),
    "channel_first": (dict(channel_last=False), (3, 6, 10)),
    "image": (dict(accept_image_fmap=True), (2, 6, 3, 5)),
    "one vector": (dict(), (7, 6)),
    "volume": (dict(accept_3d_fmap=True), (2, 6, 2, 3, 2)),
    "image, heads": (dict(accept_image_fmap=True, heads=3, codebook_dim=2, separate_codebook_per_head=True), (2, 6, 3, 5)),
}


def twins(**kwargs):
    """Ours and vqp's, built alike; vqp loads our state dict strictly (same keys and shapes)."""
    torch.manual_seed(0)
    ours = VectorQuantize(dim=6, codebook_size=12, **kwargs)
    theirs = vqp.VectorQuantize(dim=6, codebook_size=12, **kwargs)
    with torch.no_grad():  # a spread-out codebook, so that every code gets a few vectors
        ours._codebook.embed.copy_(torch.randn(ours._codebook.embed.shape))
        ours._codebook.embed_avg.copy_(ours._codebook.embed)
        if kwargs.get("use_cosine_sim"):
            ours._codebook.embed.copy_(torch.nn.functional.normalize(ours._codebook.embed, dim=-1))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("case", list(CASES))
def test_training_step_matches_vqp(case):
    ours, theirs = twins(**CASES[case])
    x, upstream = torch.randn(3, 10, 6) * 1.5, torch.randn(3, 10, 6)
    first = step(ours.train(), x, upstream), step(theirs.train(), x, upstream)
    assert_matches(*first)
    # a second step starts from the updated codebooks: still the same
    assert_matches(step(ours, x + 0.1, upstream, seed=2), step(theirs, x + 0.1, upstream, seed=2))
    if case.startswith("dead codes"):
        assert (first[1][5]["_codebook.cluster_size"] == 2.0).any()  # some code was restarted


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_match_vqp(layout):
    kwargs, shape = LAYOUTS[layout]
    ours, theirs = twins(**kwargs)
    x, upstream = torch.randn(shape), torch.randn(shape)
    assert_matches(step(ours.train(), x, upstream), step(theirs.train(), x, upstream))


@pytest.mark.parametrize("masking", ["mask", "lens"])
@pytest.mark.parametrize("kwargs", [dict(), dict(threshold_ema_dead_code=2.0), dict(rotation_trick=False, decay=0.5)])
def test_padded_sequences_match_vqp(masking, kwargs):
    """vqp's masking: padded positions are left out of the EMA counts and sums, of the dead-code
    restart pool and of the loss (a mean over the real positions only), and come back as zeros
    with index -1 (so no gradient reaches them)."""
    lens = torch.tensor([10, 4, 7])
    mask = torch.arange(10) < lens[:, None]
    given = dict(lens=lens) if masking == "lens" else dict(mask=mask)
    ours, theirs = twins(**kwargs)
    x, upstream = torch.randn(3, 10, 6) * 1.5, torch.randn(3, 10, 6)
    mine = step(ours.train(), x, upstream, **given)
    assert_matches(mine, step(theirs.train(), x, upstream, **given))
    assert (mine[1][~mask] == -1).all() and (mine[0][~mask] == 0).all() and (mine[3][~mask] == 0).all()
    assert_matches(step(ours, x + 0.1, upstream, 2, **given), step(theirs, x + 0.1, upstream, 2, **given))


def test_padding_changes_nothing_but_the_padding():
    """The statistics and loss of a padded batch are those of its real positions alone."""
    ours, _ = twins()
    twin, _ = twins()
    x = torch.randn(1, 10, 6)
    padded = torch.cat([x, 100 * torch.randn(1, 5, 6)], dim=1)
    _, idx, loss = ours.train()(x)
    _, padded_idx, padded_loss = twin.train()(padded, lens=torch.tensor([10]))
    assert torch.equal(idx, padded_idx[:, :10]) and torch.allclose(loss, padded_loss)
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[name])


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("form", ["tensor", "callable"])
def test_ema_update_weight_matches_vqp(cosine, form):
    """vqp lerps each code's statistics by (1 − decay)·w: w = 0 keeps a code, w = 0.5 halves its step;
    the callable receives the batch's sums and counts."""
    weights = torch.tensor([0.0, 1.0, 0.5] * 4)
    seen = []

    def weight_fn(sums, counts):
        seen.append((sums.shape, counts.shape))
        return weights

    ours, theirs = twins(use_cosine_sim=cosine, threshold_ema_dead_code=0.5)
    given = dict(ema_update_weight=weights if form == "tensor" else weight_fn)
    x, upstream = torch.randn(3, 10, 6), torch.randn(3, 10, 6)
    before = ours._codebook.cluster_size.clone()
    assert_matches(step(ours.train(), x, upstream, **given), step(theirs.train(), x, upstream, **given))
    kept = weights == 0  # their statistics stay; their codes move only with the smoothing's total
    assert torch.equal(ours._codebook.cluster_size[:, kept], before[:, kept])
    assert not torch.equal(ours._codebook.cluster_size[:, ~kept], before[:, ~kept])
    if form == "callable":
        assert seen[0] == seen[1] == (torch.Size([1, 12, 6]), torch.Size([1, 12]))


def test_accumulated_ema_updates_match_vqp():
    """accum_ema_update only sums the batch statistics; the next plain step adds them to its own."""
    ours, theirs = twins(threshold_ema_dead_code=2.0)
    x, upstream = torch.randn(3, 10, 6), torch.randn(3, 10, 6)
    before = ours.state_dict()
    for quantizer in (ours, theirs):
        quantizer.train()
        step(quantizer, x, upstream, accum_ema_update=True)
        step(quantizer, x * 0.5, upstream, accum_ema_update=True)
    for name, value in before.items():
        assert torch.equal(ours.state_dict()[name], value), name
    assert_matches(step(ours, x + 0.1, upstream, 2), step(theirs, x + 0.1, upstream, 2))


def test_frozen_forward_matches_vqp():
    ours, theirs = twins(threshold_ema_dead_code=2.0)
    x, upstream = torch.randn(3, 10, 6), torch.randn(3, 10, 6)
    before = ours.state_dict()
    mine = step(ours.train(), x, upstream, freeze_codebook=True)
    assert_matches(mine, step(theirs.train(), x, upstream, freeze_codebook=True))
    assert all(torch.equal(mine[5][name], value) for name, value in before.items())
    mine = step(ours, x, upstream, ema_update=False)
    assert_matches(mine, step(theirs, x, upstream, ema_update=False))
    assert torch.equal(ours.codebook, before["_codebook.embed"][0])


def test_eval_matches_vqp_and_passes_no_gradient():
    ours, theirs = twins(codebook_dim=4)
    x = torch.randn(2, 5, 6, requires_grad=True)
    q, idx, loss = ours.eval()(x)
    rq, ridx, rloss = theirs.eval()(x)
    torch.testing.assert_close(q, rq)
    assert torch.equal(idx, ridx) and loss.item() == rloss.item() == 0.0
    assert torch.equal(ours.get_output_from_indices(idx), q)
    torch.testing.assert_close(ours.get_codes_from_indices(idx), theirs.get_codes_from_indices(idx))


@pytest.mark.parametrize("kwargs", [dict(heads=2, codebook_dim=3, separate_codebook_per_head=True),
                                    dict(heads=2, codebook_dim=3), dict(accept_3d_fmap=True)])
def test_codes_from_indices_match_vqp(kwargs):
    ours, theirs = twins(**kwargs)
    shape = (2, 6, 2, 3, 2) if kwargs.get("accept_3d_fmap") else (2, 5, 6)
    x = torch.randn(shape)
    q, idx, _ = ours.eval()(x)
    rq, ridx, _ = theirs.eval()(x)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(ours.get_codes_from_indices(idx), theirs.get_codes_from_indices(idx))
    if kwargs.get("separate_codebook_per_head") or kwargs.get("accept_3d_fmap"):
        torch.testing.assert_close(ours.get_output_from_indices(idx), q)


@pytest.mark.parametrize("indices, message", [
    (torch.tensor([[0, 12]]), r"indices must lie in \[0, 12\), got values in \[0, 12\]"),
    (torch.tensor([[-1, 3]]), r"indices must lie in \[0, 12\)"),
    (torch.tensor([[0.0, 3.0]]), "indices must have dtype"),
])
def test_codes_from_bad_indices_are_named(indices, message):
    with pytest.raises((ValueError, TypeError), match=message):
        VectorQuantize(dim=6, codebook_size=12).get_codes_from_indices(indices)


@pytest.mark.parametrize("call, message", [
    (dict(mask=torch.ones(2, 4, dtype=torch.bool)), r"mask must have shape \(B, N\) = \(2, 5\)"),
    (dict(mask=torch.ones(2, 5)), "mask must have dtype"),
    (dict(mask=torch.ones(2, 5, dtype=torch.bool), lens=torch.tensor([5, 5])), "mask or lens, not both"),
    (dict(lens=torch.tensor([5.0, 5.0])), "lens must have dtype"),
])
def test_bad_masks_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        VectorQuantize(dim=6, codebook_size=12)(torch.randn(2, 5, 6), **call)


def test_vqp_checkpoint_loads_strictly():
    _, theirs = twins(codebook_dim=4, learnable_codebook=True, ema_update=False)
    fresh = VectorQuantize(dim=6, codebook_size=12, codebook_dim=4, learnable_codebook=True, ema_update=False)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(fresh.codebook, theirs.codebook)


def test_kmeans_init_finds_the_clusters_and_keeps_vqps_bookkeeping():
    """lgvq's k-means (its draws differ from vqp's): the codes land on the clusters, and the
    statistics are vqp's: cluster sizes = counts, embed = embed_avg / smoothed sizes."""
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = (centers.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 2))[None]
    q = VectorQuantize(dim=2, codebook_size=3, kmeans_init=True, kmeans_iters=5).train()
    assert not bool(q._codebook.initted) and q.codebook.abs().sum() == 0
    q(x)
    book = q._codebook
    assert bool(book.initted)
    found = sorted(q.codebook.tolist())
    torch.testing.assert_close(torch.tensor(found), torch.tensor(sorted(centers.tolist())), atol=0.1, rtol=0)
    size = book.cluster_size
    smoothed = (size + 1e-5) / (size.sum() + 3e-5) * size.sum()
    torch.testing.assert_close(q.codebook, (book.embed_avg / smoothed[..., None])[0])


def test_the_search_is_the_fused_op(monkeypatch):
    """The (N, K) distances vqp builds are never built: the search is lgvq's nearest_code."""
    calls = []
    nearest = codebook_module.nearest_code

    def spy(x, codebook, metric, **kwargs):
        calls.append((tuple(x.shape), tuple(codebook.shape), metric))
        return nearest(x, codebook, metric, **kwargs)

    monkeypatch.setattr(codebook_module, "nearest_code", spy)
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: pytest.fail("an N×K distance matrix was built"))
    VectorQuantize(dim=6, codebook_size=12, use_cosine_sim=True).train()(torch.randn(2, 5, 6))
    assert calls == [((10, 6), (12, 6), "cos")]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(affine_param=True), ValueError, r"options \['affine_param'\] are not supported .*affine_param=False"),
        (dict(orthogonal_reg_weight=0.1, stochastic_sample_codes=True), ValueError,
         r"\['orthogonal_reg_weight', 'stochastic_sample_codes'\]"),
        (dict(no_such_option=1), TypeError, r"unexpected keyword arguments \['no_such_option'\]"),
        (dict(learnable_codebook=True), ValueError, "learnable_codebook=True needs ema_update=False"),
        (dict(use_cosine_sim=True, learnable_codebook=True, ema_update=False), ValueError, "use_cosine_sim"),
        (dict(decay=1.5), ValueError, "decay must lie in"),
        (dict(eps=-1), ValueError, "eps must be > 0"),
        (dict(accept_image_fmap=True, accept_3d_fmap=True), ValueError, "cannot both be True"),
    ],
)
def test_unsupported_options_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        VectorQuantize(dim=6, codebook_size=12, **kwargs)


def test_default_valued_unsupported_options_are_accepted():
    VectorQuantize(dim=6, codebook_size=12, orthogonal_reg_weight=0.0, sync_codebook=None)
    q = VectorQuantize(dim=6, codebook_size=12)
    with pytest.raises(ValueError, match=r"options \['topk'\] are not supported"):
        q(torch.randn(2, 5, 6), topk=2)
    with pytest.raises(ValueError, match="must have 6 features"):
        q(torch.randn(2, 5, 4))
