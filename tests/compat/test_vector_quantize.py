"""lgvq.compat.VectorQuantize against vector-quantize-pytorch itself (the oracle, installed by
the test extra): the same codebook state gives the same quantized values, indices, loss,
gradients and codebook after one EMA step, and vqp checkpoints load."""

import pytest
import torch

import lgvq.compat.vector_quantize as compat_module
from lgvq.compat import VectorQuantize

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch (the oracle) is not installed")

CASES = {
    "defaults (rotation trick)": {},
    "straight-through": dict(rotation_trick=False),
    "cosine": dict(use_cosine_sim=True),
    "projection": dict(codebook_dim=4),
    "decay and weight": dict(decay=0.5, commitment_weight=0.3, eps=1e-3),
    "learnable codebook": dict(learnable_codebook=True, ema_update=False),
    "frozen codebook": dict(ema_update=False),
    "dead codes": dict(threshold_ema_dead_code=2.0),
    "dead codes, cosine": dict(threshold_ema_dead_code=2.0, use_cosine_sim=True),
}
LAYOUTS = {
    "channel_last": (dict(), (3, 10, 6)),
    "channel_first": (dict(channel_last=False), (3, 6, 10)),
    "image": (dict(accept_image_fmap=True), (2, 6, 3, 5)),
    "one vector": (dict(), (7, 6)),
}


def twins(**kwargs):
    """Ours and vqp's, built alike; vqp loads our state dict strictly (same keys and shapes)."""
    torch.manual_seed(0)
    ours = VectorQuantize(dim=6, codebook_size=12, **kwargs)
    theirs = vqp.VectorQuantize(dim=6, codebook_size=12, **kwargs)
    with torch.no_grad():  # a spread-out codebook, so that every code gets a few vectors
        ours._codebook.embed.copy_(torch.randn(1, 12, ours.codebook_dim))
        ours._codebook.embed_avg.copy_(ours._codebook.embed)
        if kwargs.get("use_cosine_sim"):
            ours._codebook.embed.copy_(torch.nn.functional.normalize(ours._codebook.embed, dim=-1))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def step(quantizer, x, upstream, seed=1):
    """A training forward and backward of ⟨quantized, upstream⟩ + 2·loss."""
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same draws for dead-code restarts
    quantized, indices, loss = quantizer(x)
    ((quantized * upstream).sum() + 2 * loss).backward()
    grads = {name: p.grad for name, p in quantizer.named_parameters()}
    return quantized.detach(), indices, loss.detach(), x.grad, grads, quantizer.state_dict()


def max_differences(ours, theirs) -> dict:
    """Largest absolute difference of every compared quantity (indices: count of mismatches)."""
    q, idx, loss, x_grad, grads, state = ours
    rq, ridx, rloss, rx_grad, rgrads, rstate = theirs
    assert idx.shape == ridx.shape and q.shape == rq.shape
    out = {"quantized": (q - rq).abs().max().item(), "indices": int((idx != ridx).sum()),
           "loss": (loss - rloss).abs().item(), "x.grad": (x_grad - rx_grad).abs().max().item()}
    assert grads.keys() == rgrads.keys()
    for name in grads:
        out[f"grad {name}"] = (grads[name] - rgrads[name]).abs().max().item()
    assert state.keys() == rstate.keys()
    for name in state:
        out[name] = (state[name].float() - rstate[name].float()).abs().max().item()
    return out


def assert_matches(ours, theirs, tol=1e-5):
    diffs = max_differences(ours, theirs)
    assert diffs["indices"] == 0, diffs
    bad = {k: v for k, v in diffs.items() if v > tol * max(1.0, abs(theirs[2].item()))}
    assert not bad, bad


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


def test_eval_matches_vqp_and_passes_no_gradient():
    ours, theirs = twins(codebook_dim=4)
    x = torch.randn(2, 5, 6, requires_grad=True)
    q, idx, loss = ours.eval()(x)
    rq, ridx, rloss = theirs.eval()(x)
    torch.testing.assert_close(q, rq)
    assert torch.equal(idx, ridx) and loss.item() == rloss.item() == 0.0
    assert torch.equal(ours.get_output_from_indices(idx), q)
    torch.testing.assert_close(ours.get_codes_from_indices(idx), theirs.get_codes_from_indices(idx))


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
    nearest = compat_module.nearest_code

    def spy(x, codebook, metric, **kwargs):
        calls.append((tuple(x.shape), tuple(codebook.shape), metric))
        return nearest(x, codebook, metric, **kwargs)

    monkeypatch.setattr(compat_module, "nearest_code", spy)
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: pytest.fail("an N×K distance matrix was built"))
    VectorQuantize(dim=6, codebook_size=12, use_cosine_sim=True).train()(torch.randn(2, 5, 6))
    assert calls == [((10, 6), (12, 6), "cos")]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(heads=2), ValueError, r"options \['heads'\] are not supported .*heads=1"),
        (dict(orthogonal_reg_weight=0.1, stochastic_sample_codes=True), ValueError,
         r"\['orthogonal_reg_weight', 'stochastic_sample_codes'\]"),
        (dict(no_such_option=1), TypeError, r"unexpected keyword arguments \['no_such_option'\]"),
        (dict(learnable_codebook=True), ValueError, "learnable_codebook=True needs ema_update=False"),
        (dict(use_cosine_sim=True, learnable_codebook=True, ema_update=False), ValueError, "use_cosine_sim"),
        (dict(decay=1.5), ValueError, "decay must lie in"),
    ],
)
def test_unsupported_options_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        VectorQuantize(dim=6, codebook_size=12, **kwargs)


def test_default_valued_unsupported_options_are_accepted():
    VectorQuantize(dim=6, codebook_size=12, heads=1, orthogonal_reg_weight=0.0, sync_codebook=None)
    q = VectorQuantize(dim=6, codebook_size=12)
    with pytest.raises(ValueError, match=r"options \['mask'\] are not supported"):
        q(torch.randn(2, 5, 6), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must have 6 features"):
        q(torch.randn(2, 5, 4))
