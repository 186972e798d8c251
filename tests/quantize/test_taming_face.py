"""VectorQuantizer as a drop-in for taming's VectorQuantizer2 (the oracle in taming_oracle.py):
default arguments, the loss weighting, index remapping, the forward keywords, and state dicts
that load both ways."""

import numpy as np
import pytest
import torch

from lgvq.models import build_model
from lgvq.models.registry import get_spec
from lgvq.quantize import ClusteredVectorQuantizer, ProjectedVectorQuantizer, VectorQuantizer

from .taming_oracle import TamingVectorQuantizer2

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]
USED = [5, 2, 9, 0, 7, 11]  # the remap file's code indices: six of the sixteen codes


@pytest.fixture
def used_file(tmp_path):
    path = tmp_path / "used.npy"
    np.save(path, np.array(USED))
    return str(path)


def twins(*args, backend="torch", **kwargs):
    """lgvq's quantizer and the oracle, built with the same arguments, sharing one codebook."""
    ours = VectorQuantizer(*args, backend=backend, **kwargs)
    theirs = TamingVectorQuantizer2(*args, **kwargs)
    with torch.no_grad():
        ours.embedding.weight.normal_()
        theirs.embedding.weight.copy_(ours.embedding.weight)
    return ours, theirs


def run(quantizer, z, upstream, seed=0):
    """Forward, then backward of ⟨z_q, upstream⟩ + 2·loss; (z_q, loss, indices, z.grad, codebook.grad)."""
    z = z.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same draws for unknown_index="random"
    z_q, loss, (perplexity, min_encodings, indices) = quantizer(z)
    assert min_encodings is None
    ((z_q * upstream).sum() + 2 * loss).backward()
    return z_q.detach(), loss.detach(), indices, z.grad, quantizer.embedding.weight.grad


def assert_same_results(ours, theirs):
    z_q, loss, indices, z_grad, e_grad = ours
    ref_zq, ref_loss, ref_indices, ref_z_grad, ref_e_grad = theirs
    assert indices.shape == ref_indices.shape and torch.equal(indices, ref_indices)
    # taming returns z + (e - z): its rounding of e, within an ulp of |z|
    torch.testing.assert_close(z_q, ref_zq, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(z_grad, ref_z_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e_grad, ref_e_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("legacy", ["default", True, False])
def test_matches_taming(backend, legacy):
    kwargs = {} if legacy == "default" else {"legacy": legacy}
    ours, theirs = twins(16, 6, 0.25, backend=backend, **kwargs)
    assert ours.legacy == theirs.legacy
    z, upstream = torch.randn(2, 6, 3, 5), torch.randn(2, 6, 3, 5)
    assert_same_results(run(ours, z, upstream), run(theirs, z, upstream))


def test_default_weighting_is_taming_legacy():
    """legacy=True puts beta on the codebook term: z's gradient is 2·(z − e)/n, the codebook's
    2·beta·(e − z)/n summed per code (by hand, not through the oracle)."""
    q = VectorQuantizer(4, 2, 0.25)
    q.embedding.weight.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [-5.0, 5.0]])
    z = torch.tensor([[[[0.2]], [[0.1]]], [[[0.8]], [[1.0]]]], requires_grad=True)  # (2, 2, 1, 1): codes 0, 1
    _, loss, (_, _, indices) = q(z)
    loss.backward()
    assert indices.tolist() == [0, 1]
    e = torch.tensor([[[[0.0]], [[0.0]]], [[[1.0]], [[1.0]]]])
    torch.testing.assert_close(z.grad, 2 * (z.detach() - e) / 4)
    expected = torch.zeros(4, 2)
    expected[:2] = 2 * 0.25 * (e - z.detach()).flatten(1) / 4
    torch.testing.assert_close(q.embedding.weight.grad, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unknown_index", ["random", "extra", 1])
@pytest.mark.parametrize("sane_index_shape", [False, True])
def test_remap_matches_taming(used_file, backend, unknown_index, sane_index_shape):
    ours, theirs = twins(16, 4, 0.25, remap=used_file, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, backend=backend)
    assert ours.re_embed == theirs.re_embed
    z, upstream = torch.randn(3, 4, 4, 5) * 2, torch.randn(3, 4, 4, 5)
    ours_out, theirs_out = run(ours, z, upstream), run(theirs, z, upstream)
    assert_same_results(ours_out, theirs_out)
    raw = ours.quantize(z.movedim(1, -1)).indices
    known = torch.isin(raw, torch.tensor(USED))
    assert known.any() and (~known).any()  # both kinds of code are remapped
    shape = (3, 4, 5, 4)
    torch.testing.assert_close(ours.get_codebook_entry(ours_out[2], shape),
                               theirs.get_codebook_entry(theirs_out[2].clone(), shape))


def test_remap_positions_by_hand(used_file):
    q = VectorQuantizer(16, 1, remap=used_file, unknown_index="extra")
    codes = torch.tensor([[5, 0, 3], [11, 2, 2]])
    assert q.remap_to_used(codes).tolist() == [[0, 3, 6], [5, 1, 1]]  # 3 is not used: extra (6)
    assert q.unmap_to_all(torch.tensor([0, 3, 6, 5])).tolist() == [5, 0, 5, 11]  # extra → used[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temp=None), dict(temp=1.0), dict(rescale_logits=False, return_logits=False),
    ],
)
def test_forward_takes_tamings_neutral_keywords(kwargs):
    ours, theirs = twins(8, 4, 0.25)
    z = torch.randn(2, 4, 2, 2)
    assert torch.equal(ours(z, **kwargs)[0], ours(z)[0])
    torch.testing.assert_close(ours(z, **kwargs)[0], theirs(z, **kwargs)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temp=0.5), "temp must be None or 1.0"),
        (dict(rescale_logits=True), "rescale_logits and return_logits must be False"),
        (dict(return_logits=True), "rescale_logits and return_logits must be False"),
    ],
)
def test_forward_rejects_gumbel_keywords(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VectorQuantizer(8, 4)(torch.randn(2, 4, 2, 2), **kwargs)


def test_state_dicts_load_both_ways(used_file):
    for kwargs, keys in [({}, {"embedding.weight"}), ({"remap": used_file}, {"embedding.weight", "used"})]:
        ours, theirs = twins(16, 4, 0.25, **kwargs)
        assert set(ours.state_dict()) == set(theirs.state_dict()) == keys
        fresh_theirs, fresh_ours = TamingVectorQuantizer2(16, 4, 0.25, **kwargs), VectorQuantizer(16, 4, **kwargs)
        fresh_theirs.load_state_dict(ours.state_dict(), strict=True)
        fresh_ours.load_state_dict(theirs.state_dict(), strict=True)
        assert torch.equal(fresh_theirs.embedding.weight, ours.embedding.weight)
        assert torch.equal(fresh_ours.embedding.weight, theirs.embedding.weight)


@pytest.mark.parametrize(
    "kwargs, extra",
    [
        (dict(ema=True), {"ema_counts", "ema_sums"}),
        (dict(kmeans_init=True), {"initialized"}),
        (dict(dead_code_threshold=0.5), {"usage_ema"}),
        (dict(track_usage=True), {"last_used", "step"}),
    ],
)
def test_state_dict_holds_the_buffers_of_enabled_features_only(kwargs, extra):
    assert set(VectorQuantizer(8, 2, **kwargs).state_dict()) == {"embedding.weight"} | extra


def test_older_lgvq_checkpoints_still_load():
    """lgvq used to keep every statistic whatever the options: such checkpoints load strictly,
    into a plain quantizer and into a model (whose quantizer tracks usage)."""
    old = {
        "embedding.weight": torch.randn(8, 2), "initialized": torch.tensor(True), "usage_ema": torch.rand(8),
        "last_used": torch.arange(8), "step": torch.tensor(9),
    }
    q = VectorQuantizer(8, 2)
    q.load_state_dict(old, strict=True)
    assert torch.equal(q.embedding.weight, old["embedding.weight"])
    tracking = VectorQuantizer(8, 2, track_usage=True)
    tracking.load_state_dict(old, strict=True)
    assert int(tracking.step) == 9 and torch.equal(tracking.last_used, old["last_used"])

    model = build_model("vqvae-tiny")
    state = model.state_dict()
    state["quantize.initialized"] = torch.tensor(True)
    state["quantize.usage_ema"] = torch.zeros(model.config.n_embed)
    model.load_state_dict(state, strict=True)


def test_loaded_codebook_is_not_replaced_by_kmeans():
    q = VectorQuantizer(4, 2, kmeans_init=True).train()
    weight = torch.randn(4, 2)
    q.load_state_dict({"embedding.weight": weight}, strict=True)  # a taming checkpoint
    q.quantize(torch.randn(20, 2) + 10)
    assert torch.equal(q.embedding.weight.detach(), weight)


def test_perplexity_is_a_value_where_taming_returns_none():
    ours, theirs = twins(4, 1, 0.25)
    with torch.no_grad():
        ours.embedding.weight.copy_(torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
    z = torch.tensor([0.0, 0.1, 10.0, 30.0]).view(1, 1, 2, 2)  # codes 0, 0, 1, 3
    perplexity = ours(z)[2][0]
    assert theirs(z)[2][0] is None
    p = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(perplexity, torch.exp(-(p * p.log()).sum()))


def test_lgvq_models_keep_their_explicit_weighting():
    """Models and the other quantizers state their weighting instead of inheriting taming's."""
    assert build_model("vqvae-tiny").quantize.legacy is False
    assert build_model("vqvae-tiny").quantize.track_usage
    assert get_spec("vqgan-f16-paper").model.legacy is True  # the release: taming's default
    assert get_spec("cvq-f16-paper").model.legacy is False
    assert ClusteredVectorQuantizer(8, 2).legacy is False
    assert ProjectedVectorQuantizer(8, 2).legacy is False


def test_bad_remap_arguments(tmp_path, used_file):
    with pytest.raises(FileNotFoundError, match="remap file not found: .*nowhere.npy"):
        VectorQuantizer(16, 4, remap=str(tmp_path / "nowhere.npy"))
    with pytest.raises(TypeError, match="remap must be the path of a .npy file"):
        VectorQuantizer(16, 4, remap=[1, 2])
    outside = tmp_path / "outside.npy"
    np.save(outside, np.array([3, 16]))
    with pytest.raises(ValueError, match=r"outside \[0, n_e=16\)"):
        VectorQuantizer(16, 4, remap=str(outside))
    floats = tmp_path / "floats.npy"
    np.save(floats, np.array([0.5]))
    with pytest.raises(ValueError, match="1-D integer array"):
        VectorQuantizer(16, 4, remap=str(floats))
    with pytest.raises(ValueError, match="unknown_index must be 'random', 'extra' or an int in"):
        VectorQuantizer(16, 4, remap=used_file, unknown_index=6)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 7\)"):
        VectorQuantizer(16, 4, remap=used_file, unknown_index="extra").get_codebook_entry(torch.tensor([7]))
