"""lgvq.compat.IndexPropagationQuantize against Open-MAGVIT2's IBQ formulas (tests/compat/
magvit2_oracle.py): values, indices and gradients to 1e-5 on awkward shapes, remap, ties, the
state dict and the modern face's training loss.

The formula checks run in float64, where both sides are exact to far below the tolerance; the
fp32 checks compare fp32 runs with that float64 oracle, to 1e-4 of each quantity's size (at the
entropy loss's temperature 0.01 the logits reach hundreds: the peer's own dense fp32 gradients
are ~1e-4 off there)."""

import numpy as np
import pytest
import torch

from lgvq.compat import IndexPropagationQuantize
from . import magvit2_oracle as oracle

# (B, d, H, W), K, scale of z (peaked softmax: large; flat: tiny)
SHAPES = {
    "small": ((2, 5, 3, 4), 37, 1.0),
    "one row": ((1, 6, 1, 1), 9, 1.0),
    "peaked": ((2, 4, 2, 3), 19, 30.0),
    "flat": ((2, 4, 2, 3), 19, 1e-3),
    "K past one code tile": ((1, 3, 2, 2), 2051, 1.0),
    "sequence": ((2, 7, 5), 11, 1.0),
}
TERM_WEIGHTS = (1.3, 0.7, -0.4, 0.9)  # distinct, so a swapped or dropped term changes the gradient


def run(forward, z, codebook, upstream):
    """Forward, then backward of ⟨z_q, upstream⟩ + Σ_j w_j·term_j; values and gradients."""
    z = z.detach().clone().requires_grad_(True)
    codebook.grad = None
    z_q, loss, idx = forward(z)
    terms = loss if isinstance(loss, tuple) else (loss,)
    total = (z_q * upstream).sum() + sum(w * t for w, t in zip(TERM_WEIGHTS, terms))
    total.backward()
    return z_q.detach(), [t.detach() for t in terms], idx, z.grad, codebook.grad.clone()


def compare(ours, theirs, tol=1e-5):
    """Ours (any float dtype) against the oracle's results, compared in the oracle's dtype."""
    z_q, terms, idx, z_grad, e_grad = ours
    r_z_q, r_terms, r_idx, r_z_grad, r_e_grad = theirs
    assert torch.equal(idx, r_idx)
    assert len(terms) == len(r_terms)
    for name, value, expected in [("z_q", z_q, r_z_q), *zip(["term"] * len(terms), terms, r_terms),
                                  ("dz", z_grad, r_z_grad), ("dE", e_grad, r_e_grad)]:
        scale = max(1.0, float(expected.abs().max()))  # tolerances relative to the quantity's size
        torch.testing.assert_close(value.to(expected.dtype), expected, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("entropy", [False, True], ids=["quant loss", "entropy loss"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_matches_open_magvit2(case, entropy):
    compare_with_peer(case, entropy, torch.float64, entropy_temperature=0.01)


@pytest.mark.parametrize("entropy_temperature", [
    None,
    0.5,
    0.01,
])
def test_fp32_as_accurate_as_the_peers_fp32(entropy_temperature):
    """fp32 against the float64 oracle within 1e-4 of each quantity's size, which the peer's own
    dense fp32 meets (None: no entropy loss). At temperature 0.01 the logits reach hundreds."""
    entropy = entropy_temperature is not None
    compare_with_peer("small", entropy, torch.float32, entropy_temperature=entropy_temperature or 0.01, tol=1e-4)


def compare_with_peer(case, entropy, dtype, entropy_temperature, tol=1e-5):
    """Ours in ``dtype`` against the oracle in float64 on the same codebook and inputs."""
    shape, k, scale = SHAPES[case]
    torch.manual_seed(0)
    options = dict(beta=0.3, entropy_temperature=entropy_temperature, sample_minimization_weight=0.8,
                   batch_maximization_weight=1.2)
    q = IndexPropagationQuantize(k, shape[1], use_entropy_loss=entropy, backend="torch", **options).to(dtype)
    z = torch.randn(shape, dtype=torch.float64) * scale
    upstream = torch.randn(shape, dtype=torch.float64)
    codebook = q.embedding.weight
    exact = torch.nn.Parameter(codebook.detach().double())

    def peer(z):
        z4 = z if z.dim() == 4 else z.unsqueeze(-1)  # the oracle takes (B, d, H, W)
        z_q, loss, idx = oracle.ibq(
            z4, exact, options["beta"], entropy, options["entropy_temperature"],
            options["sample_minimization_weight"], options["batch_maximization_weight"],
        )
        return z_q.view(z.shape), loss, idx

    def ours(z):
        z_q, loss, (none_a, none_b, idx) = q(z)
        assert none_a is None and none_b is None
        return z_q, loss, idx

    compare(run(ours, z.to(dtype), codebook, upstream.to(dtype)), run(peer, z, exact, upstream), tol)


def test_ties_pick_the_lowest_index_as_the_peer():
    torch.manual_seed(1)
    q = IndexPropagationQuantize(6, 4, use_entropy_loss=True, backend="torch").double()
    with torch.no_grad():
        q.embedding.weight[3] = q.embedding.weight[1]  # codes 1 and 3 tie for every input
        q.embedding.weight[5] = q.embedding.weight[1]
    z = q.embedding.weight.detach()[1].view(1, 4, 1, 1).repeat(2, 1, 2, 1) * 3
    upstream = torch.randn(z.shape)
    codebook = q.embedding.weight
    ours = run(lambda z: (lambda o: (o[0], o[1], o[2][2]))(q(z)), z, codebook, upstream)
    theirs = run(lambda z: oracle.ibq(z, codebook, use_entropy_loss=True), z, codebook, upstream)
    assert (ours[2] == 1).all()
    compare(ours, theirs)


def test_state_dict_and_init_are_the_peers():
    torch.manual_seed(0)
    q = IndexPropagationQuantize(512, 8)
    assert list(q.state_dict()) == ["embedding.weight"]
    assert 0.9 < float(q.embedding.weight.detach().std()) < 1.1  # nn.Embedding's N(0, 1), not taming's uniform
    other = IndexPropagationQuantize(512, 8)
    other.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(other.embedding.weight, q.embedding.weight)


def test_train_and_eval_give_the_same_losses():
    torch.manual_seed(0)
    q = IndexPropagationQuantize(13, 4, use_entropy_loss=True)
    z = torch.randn(2, 4, 3, 3)
    train = q.train()(z)[1]
    evaluated = q.eval()(z)[1]
    for a, b in zip(train, evaluated):
        torch.testing.assert_close(a, b)


def test_remap_softmax_over_used_codes(tmp_path):
    torch.manual_seed(0)
    used = np.array([7, 2, 9, 4, 0])
    np.save(tmp_path / "used.npy", used)
    q = IndexPropagationQuantize(
        11, 3, use_entropy_loss=True, remap=str(tmp_path / "used.npy"), unknown_index="extra", backend="torch"
    )
    assert sorted(q.state_dict()) == ["embedding.weight", "used"]
    z = torch.randn(2, 3, 2, 2)
    upstream = torch.randn(z.shape)
    codebook = q.embedding.weight
    used_t = torch.from_numpy(used)

    def peer(z):  # the peer's intent: softmax over the used codes; positions in ``used``, (N, 1)
        z_q, loss, idx = oracle.ibq(z, codebook[used_t], use_entropy_loss=True)
        return z_q, loss, idx.view(-1, 1)

    ours = run(lambda z: (lambda o: (o[0], o[1], o[2][2]))(q(z)), z, codebook, upstream)
    compare(ours, run(peer, z, codebook, upstream))
    unused = torch.ones(11, dtype=torch.bool)
    unused[used_t] = False
    assert (ours[4][unused] == 0).all()
    positions = ours[2]
    codes = q.get_codebook_entry(positions.view(2, 2, 2), shape=(2, 2, 2, 3))
    torch.testing.assert_close(codes, ours[0])
    extra = q.get_codebook_entry(torch.tensor([5]))  # the extra position maps to used[0], as in taming
    torch.testing.assert_close(extra, codebook[7:8].detach())


def test_modern_face_training_loss():
    torch.manual_seed(0)
    q = IndexPropagationQuantize(17, 4, use_entropy_loss=True, entropy_loss_weight=0.3, track_usage=True).train()
    z = torch.randn(3, 5, 4)
    out = q.quantize(z)
    z_q, (quant, _, _, entropy), (_, _, idx) = q(z.movedim(-1, 1))
    torch.testing.assert_close(out.loss, quant + 0.3 * entropy)
    torch.testing.assert_close(out.z_q, z_q.movedim(1, -1))
    assert out.indices.shape == (3, 5) and torch.equal(out.indices.flatten(), idx)
    assert 0 < float(out.usage) <= 1
    plain = IndexPropagationQuantize(17, 4)
    plain.load_state_dict(q.state_dict(), strict=False)
    torch.testing.assert_close(plain.quantize(z).loss, quant)


def test_bad_input():
    q = IndexPropagationQuantize(8, 4)
    with pytest.raises(ValueError, match="z must be channels-first"):
        q(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="entropy_temperature must be"):
        IndexPropagationQuantize(8, 4, entropy_temperature=0.0)


def test_duplicate_used_codes_rejected(tmp_path):
    np.save(tmp_path / "used.npy", np.array([1, 3, 1]))
    with pytest.raises(ValueError, match="lists a code twice"):
        IndexPropagationQuantize(8, 4, remap=str(tmp_path / "used.npy"))
