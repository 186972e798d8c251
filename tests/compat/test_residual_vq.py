"""lgvq.compat.ResidualVQ / GroupedResidualVQ against vector-quantize-pytorch itself (the oracle,
installed by the test extra): from the same codebook state, the same quantized values, indices,
per-stage losses, gradients and codebook buffers over two training steps.

vqp's residual quantizer, in our words: r_0 = project_in(x); stage l is a VectorQuantize of
codebook_dim features on r_l, returning q_l (its code in value; the gradient reaches r_l by
the rotation trick or straight through) and loss_l = w · mean((sg e_l − r_l)²); then
r_{l+1} = r_l − sg(q_l) (a fraction f of q_l's gradient kept with quant_grad_frac = f);
output project_out(Σ q_l). Each stage EMA-updates and restarts its own codebook on its r_l;
a shared codebook only folds every stage's statistics into its averages and recomputes its
codes after the last stage. Quantizer dropout keeps stages up to a random index drawn by
random.Random(seed), the seed drawn from torch's generator; later stages give index -1, loss 0.
"""

import pytest
import torch

import lgvq.compat.residual_vq as residual_module
from lgvq.compat import GroupedResidualVQ, ResidualVQ

from .vqp_comparison import CODEBOOK_CASES, assert_matches, step

vqp = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch (the oracle) is not installed")

CASES = {
    **CODEBOOK_CASES,
    "shared codebook": dict(shared_codebook=True),
    "gradient fraction": dict(quant_grad_frac=0.1),
    "sizes per stage": dict(codebook_size=(12, 8, 5), num_quantizers=None),
    "quantizer dropout": dict(quantize_dropout=True, num_quantizers=4),
    "structured dropout": dict(quantize_dropout=True, num_quantizers=5, quantize_dropout_cutoff_index=1,
                               quantize_dropout_multiple_of=2, threshold_ema_dead_code=2.0),
}


def twins(cls=ResidualVQ, seed=0, **kwargs):
    """Ours and vqp's, built alike; vqp loads our state dict strictly (same keys and shapes)."""
    kwargs = {"dim": 6, "num_quantizers": 3, "codebook_size": 12, **kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    torch.manual_seed(seed)
    ours = cls(**kwargs)
    theirs = getattr(vqp, cls.__name__)(**kwargs)
    rvqs = ours.rvqs if cls is GroupedResidualVQ else [ours]
    with torch.no_grad():  # spread-out codebooks that shrink stage by stage, as residuals do
        for rvq in rvqs:
            for stage, layer in enumerate(rvq.layers):
                book = layer._codebook
                book.embed.copy_(torch.randn(book.embed.shape) * 0.6**stage)
                if kwargs.get("use_cosine_sim"):
                    book.embed.copy_(torch.nn.functional.normalize(book.embed, dim=-1))
                book.embed_avg.copy_(book.embed)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def two_steps(ours, theirs, shape=(3, 10, 6), **forward_kwargs):
    x, upstream = torch.randn(shape) * 1.5, torch.randn(shape)
    first = step(ours.train(), x, upstream, **forward_kwargs), step(theirs.train(), x, upstream, **forward_kwargs)
    assert_matches(*first)
    second = (step(ours, x + 0.1, upstream, 2, **forward_kwargs), step(theirs, x + 0.1, upstream, 2, **forward_kwargs))
    assert_matches(*second)
    return first, second


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_match_vqp(case):
    first, second = two_steps(*twins(**CASES[case]))
    indices = torch.cat([first[0][1], second[0][1]])
    if "dropout" in case:  # the seeds drop some stages in one of the steps, not all
        assert (indices == -1).any() and (indices >= 0).any()
    if case.startswith("dead codes") or case == "structured dropout":
        assert any((s[0][5][k] == 2.0).any() for s in (first, second) for k in s[0][5] if k.endswith("cluster_size"))


@pytest.mark.parametrize("kwargs", [dict(), dict(threshold_ema_dead_code=2.0, quant_grad_frac=0.1)])
def test_padded_sequences_match_vqp(kwargs):
    mask = torch.arange(10) < torch.tensor([10, 4, 7])[:, None]
    (mine, _), _ = two_steps(*twins(**kwargs), mask=mask)
    assert (mine[1][~mask] == -1).all() and (mine[0][~mask] == 0).all() and (mine[3][~mask] == 0).all()


def test_frozen_codebooks_match_vqp():
    ours, theirs = twins(threshold_ema_dead_code=2.0)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    (mine, _), _ = two_steps(ours, theirs, freeze_codebook=True)
    assert all(torch.equal(mine[5][k], v) for k, v in before.items())


@pytest.mark.parametrize("kwargs", [dict(), dict(threshold_ema_dead_code=2.0, quantize_dropout=True, num_quantizers=4)])
def test_grouped_training_steps_match_vqp(kwargs):
    (mine, _), _ = two_steps(*twins(GroupedResidualVQ, dim=8, groups=2, **kwargs), shape=(3, 10, 8))
    assert mine[1].shape == (2, 3, 10, kwargs.get("num_quantizers", 3)) and mine[2].shape == (2, kwargs.get("num_quantizers", 3))


@pytest.mark.parametrize("layout", ["image", "channel_first"])
def test_feature_map_layouts_quantize_as_vqp_does_their_tokens(layout):
    """vqp 1.32's ResidualVQ fails on these layouts; ours must equal vqp on the same tokens."""
    plain, theirs = twins()
    ours = ResidualVQ(dim=6, num_quantizers=3, codebook_size=12,
                      **({"accept_image_fmap": True} if layout == "image" else {"channel_last": False}))
    ours.load_state_dict(plain.state_dict())
    tokens = torch.randn(2, 15, 6)
    x = tokens.transpose(1, 2).unflatten(2, (3, 5)) if layout == "image" else tokens.transpose(1, 2)
    q, idx, losses = ours.train()(x)
    rq, ridx, rlosses = theirs.train()(tokens)
    back = q.flatten(2).transpose(1, 2)
    torch.testing.assert_close(back, rq)
    assert torch.equal(idx.reshape(ridx.shape), ridx)
    torch.testing.assert_close(losses, rlosses)
    ours.eval()
    q, idx, _ = ours(x)
    torch.testing.assert_close(ours.get_output_from_indices(idx), q)


@pytest.mark.parametrize("kwargs", [dict(codebook_dim=4), dict(codebook_size=(12, 8, 5), num_quantizers=None)])
def test_eval_codes_and_outputs_match_vqp(kwargs):
    ours, theirs = twins(**kwargs)
    x = torch.randn(2, 5, 6)
    q, idx, losses, codes = ours.eval()(x, return_all_codes=True)
    rq, ridx, rlosses, rcodes = theirs.eval()(x, return_all_codes=True)
    torch.testing.assert_close(q, rq)
    assert torch.equal(idx, ridx) and torch.equal(losses, rlosses) and not losses.any()
    torch.testing.assert_close(codes, rcodes)
    torch.testing.assert_close(ours.get_output_from_indices(idx), theirs.get_output_from_indices(idx))
    torch.testing.assert_close(ours.get_output_from_indices(idx), q)


def test_coarse_indices_decode_as_vqp():
    """With quantizer dropout, indices of the first stages only (or -1) decode to the partial sum."""
    ours, theirs = twins(quantize_dropout=True)
    idx = torch.tensor([[[3, 5, -1], [0, -1, -1]]])
    torch.testing.assert_close(ours.get_codes_from_indices(idx), theirs.get_codes_from_indices(idx))
    torch.testing.assert_close(ours.get_output_from_indices(idx[..., :2]), theirs.get_output_from_indices(idx[..., :2]))
    grouped, theirs_grouped = twins(GroupedResidualVQ, dim=8, groups=2)
    both = torch.stack([idx.clamp_min(0), idx.flip(-1).clamp_min(0)])
    torch.testing.assert_close(grouped.get_output_from_indices(both), theirs_grouped.get_output_from_indices(both))


def test_kmeans_initialises_stage_after_stage():
    """Stage l's codebook is fit to what the initialised stages before it leave: on points at
    3 centres, stage 0 lands on the centres and stage 1 on the (small) offsets around them."""
    centers = torch.tensor([[6.0, 0.0], [-6.0, 0.0], [0.0, 6.0]])
    offsets = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    x = (centers.repeat_interleave(2, 0) + offsets.repeat(3, 1)).repeat(10, 1)[None]
    rvq = ResidualVQ(dim=2, num_quantizers=2, codebook_size=3, kmeans_init=True, kmeans_iters=5, decay=1.0)
    rvq.train()(x)
    first, second = (torch.tensor(sorted(layer.codebook.tolist())) for layer in rvq.layers)
    torch.testing.assert_close(first, torch.tensor(sorted(centers.tolist())), atol=1e-4, rtol=0)
    assert (second.abs() <= 0.5 + 1e-4).all() and bool(rvq.layers[1]._codebook.initted)


def test_vqp_checkpoint_loads_strictly():
    _, theirs = twins(codebook_dim=4, shared_codebook=True)
    fresh = ResidualVQ(dim=6, num_quantizers=3, codebook_size=12, codebook_dim=4, shared_codebook=True)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(fresh.codebooks, theirs.codebooks)
    assert fresh.layers[2]._codebook is fresh.layers[0]._codebook


def test_the_stages_are_one_fused_op(monkeypatch):
    """No (N, K) distance matrix and no stage-by-stage search: a training step is one call of the
    fused op (its autograd gives vqp's gradients), an eval step one call through residual_indices."""
    calls = []
    op = residual_module.residual_quantize

    def spy(z, codebooks, **kwargs):
        calls.append((tuple(z.shape), tuple(codebooks.shape), kwargs["metric"], z.requires_grad))
        return op(z, codebooks, **kwargs)

    monkeypatch.setattr(residual_module, "residual_quantize", spy)
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: pytest.fail("an N×K distance matrix was built"))
    monkeypatch.setattr(residual_module, "nearest_code", lambda *a, **k: pytest.fail("searched stage by stage"))
    rvq = ResidualVQ(dim=6, num_quantizers=4, codebook_size=12, use_cosine_sim=True)
    x = torch.randn(2, 5, 6, requires_grad=True)
    rvq.train()(x)
    rvq.train()(x, mask=torch.arange(5) < torch.tensor([[5], [3]]))  # padded sequences too
    rvq.eval()(x)
    assert calls == [((10, 6), (4, 12, 6), "cos", True)] * 2 + [((10, 6), (4, 12, 6), "cos", False)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(heads=2), "heads must be 1"),
        (dict(beam_size=2), r"options \['beam_size'\] are not supported"),
        (dict(implicit_neural_codebook=True), r"options \['implicit_neural_codebook'\]"),
        (dict(stochastic_sample_codes=True), r"options \['stochastic_sample_codes'\]"),
        (dict(shared_codebook=True, threshold_ema_dead_code=2), "restarts dead codes of the shared codebook"),
        (dict(shared_codebook=True, codebook_size=(12, 8), num_quantizers=2), "one codebook_size for all stages"),
        (dict(quantize_dropout_cutoff_index=3), r"quantize_dropout_cutoff_index must lie in \[0, 3\)"),
        (dict(eps=-1), "eps must be > 0"),
    ],
)
def test_unsupported_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualVQ(**{"dim": 6, "num_quantizers": 3, "codebook_size": 12, **kwargs})


@pytest.mark.parametrize("indices, message", [
    (torch.tensor([[[0, 12, 1]]]), r"indices\[\.\.\., 1\] must lie in \[-1, 12\)"),
    (torch.tensor([[[0, 1]]]), "fewer only with quantize_dropout"),
    (torch.tensor([[[0.0, 1.0, 2.0]]]), "indices must have dtype"),
])
def test_bad_indices_are_named(indices, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ResidualVQ(dim=6, num_quantizers=3, codebook_size=12).get_codes_from_indices(indices)
