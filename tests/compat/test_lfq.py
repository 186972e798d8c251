"""lgvq.compat.LFQ against Open-MAGVIT2's LFQ formulas (tests/compat/magvit2_oracle.py): the
quantized values, indices, entropy terms over all 2^b codes, commitment and gradients to 1e-5,
for one and several codebooks, masks, token factorisation, train and eval; its helpers."""

import pytest
import torch

from lgvq.compat import LFQ

from . import magvit2_oracle as oracle

# input shape (B, D, *spatial), bits b, num_codebooks, scale of x (peaked: large; flat: tiny)
CASES = {
    "image": ((2, 5, 3, 2), 5, 1, 1.0),
    "sequence, two codebooks": ((2, 6, 7), 3, 2, 1.0),
    "one row": ((1, 4, 1, 1), 4, 1, 1.0),
    "peaked": ((2, 4, 2, 2), 4, 1, 5.0),
    "flat": ((2, 4, 2, 2), 4, 1, 1e-3),
    "4096 codes": ((1, 12, 2, 3), 12, 1, 0.3),
}
WEIGHTS = (0.7, -0.4, 0.9)  # of (entropy aux loss, commitment, sample entropy) in the backward


def run(forward, x, upstream):
    x = x.detach().clone().requires_grad_(True)
    (q, aux, indices), (sample, avg, commit) = forward(x)
    total = (q * upstream).sum() + WEIGHTS[0] * aux + WEIGHTS[1] * commit + WEIGHTS[2] * sample
    if total.requires_grad:
        total.backward()
    return q.detach(), [t.detach() for t in (aux, sample, avg, commit)], indices, x.grad


def ours_as_peer(quantizer, **kwargs):
    def forward(x):
        (q, aux, indices), breakdown = quantizer(x, return_loss_breakdown=True, **kwargs)
        assert float(breakdown.avg_probs) == 0.0
        return (q, aux, indices), breakdown[:3]
    return forward


def compare(ours, theirs, tol=1e-5):
    q, terms, indices, grad = ours
    r_q, r_terms, r_indices, r_grad = theirs
    if isinstance(r_indices, tuple):
        assert all(torch.equal(a, b) for a, b in zip(indices, r_indices))
    else:
        assert indices.dtype == torch.int64 and torch.equal(indices, r_indices)
    torch.testing.assert_close(q, r_q.to(q.dtype), rtol=0, atol=0)
    named = [*zip(["aux", "sample", "avg", "commit"], terms, r_terms)]
    if r_grad is not None:
        named.append(("dx", grad, r_grad))
    for name, value, expected in named:
        scale = max(1.0, float(expected.abs().max()))  # tolerances relative to the quantity's size
        torch.testing.assert_close(value.double(), expected.double(), rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_training_matches_open_magvit2(case):
    shape, bits, groups, scale = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * scale
    upstream = torch.randn(shape, dtype=torch.float64)
    lfq = LFQ(dim=bits * groups, codebook_size=2**bits, num_codebooks=groups, sample_minimization_weight=0.8,
              batch_maximization_weight=1.3, backend="torch").train()
    peer = lambda x: oracle.lfq(x, bits, groups, 0.8, 1.3)  # noqa: E731
    compare(run(ours_as_peer(lfq), x, upstream), run(peer, x, upstream))


@pytest.mark.parametrize("scale", [
    0.003,
    0.3,
])
def test_fp32_as_accurate_as_the_peers_fp32(scale):
    """fp32 against the float64 oracle, within 1e-4 of each quantity's size: the peer's own dense
    fp32 stays within it (its error is ~4e-5 at scale 0.3, where the logits 2·x·c / 0.01 reach ~100)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 2) * scale
    upstream = torch.randn(x.shape)
    lfq = LFQ(dim=5, codebook_size=32, backend="torch").train()
    exact = run(lambda x: oracle.lfq(x, 5), x.double(), upstream.double())
    compare(run(lambda x: oracle.lfq(x, 5), x, upstream), exact, tol=1e-4)  # the peer's fp32
    compare(run(ours_as_peer(lfq), x, upstream), exact, tol=1e-4)


def test_mask_selects_commitment_positions_only():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.4
    upstream = torch.randn(x.shape, dtype=torch.float64)
    lfq = LFQ(dim=4, codebook_size=16, backend="torch").train()
    ours = run(ours_as_peer(lfq, mask=mask), x, upstream)
    compare(ours, run(lambda x: oracle.lfq(x, 4, mask=mask), x, upstream))
    unmasked = run(ours_as_peer(lfq), x, upstream)
    assert not torch.allclose(ours[1][3], unmasked[1][3])  # the commitment changed, the entropy did not
    torch.testing.assert_close(ours[1][1], unmasked[1][1])


def test_token_factorization_splits_the_indices():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 2, 2, dtype=torch.float64)
    upstream = torch.randn(x.shape, dtype=torch.float64)
    lfq = LFQ(dim=6, codebook_size=64, token_factorization=True, factorized_bits=[2, 4], backend="torch").train()
    ours = run(ours_as_peer(lfq), x, upstream)
    compare(ours, run(lambda x: oracle.lfq(x, 6, token_factorization=True, factorized_bits=(2, 4)), x, upstream))
    pre, post = ours[2]
    codes = torch.cat([lfq.get_codebook_entry(pre.view(2, 4), (2, 2, 2, 2), "pre"),
                       lfq.get_codebook_entry(post.view(2, 4), (2, 2, 2, 4), "post")], dim=1)
    torch.testing.assert_close(codes, ours[0].float())


@pytest.mark.parametrize("mode", ["eval", "no loss"])
def test_without_losses(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    upstream = torch.randn(x.shape, dtype=torch.float64)
    lfq = LFQ(dim=4, codebook_size=16, backend="torch")
    lfq.train(mode == "no loss")
    kwargs = dict(return_loss=False) if mode == "no loss" else {}
    ours = run(ours_as_peer(lfq, **kwargs), x, upstream)
    compare(ours, run(lambda x: oracle.lfq(x, 4, training=mode == "no loss", return_loss=False), x, upstream))
    assert float(ours[1][0]) == 0.0


def test_helpers_and_state_dict():
    lfq = LFQ(dim=4, codebook_size=16)
    assert lfq.state_dict() == {}  # the peer's buffers are all non-persistent
    torch.testing.assert_close(lfq.codebook, oracle.sign_codebook(4))
    indices = torch.tensor([[0, 5], [15, 9]])
    assert torch.equal(lfq.bits_to_indices(lfq.indices_to_bits(indices)), indices)
    torch.testing.assert_close(lfq.decode(indices[..., None]), oracle.sign_codebook(4)[indices])
    torch.testing.assert_close(lfq.get_codebook_entry(indices), oracle.sign_codebook(4)[indices])
    grid = lfq.get_codebook_entry(indices.view(1, 4), (1, 2, 2, 4))
    torch.testing.assert_close(grid, oracle.sign_codebook(4)[indices].permute(2, 0, 1).unsqueeze(0))
    assert "num_codebooks=1" in repr(lfq) and LFQ(codebook_size=8).dim == 3


def test_modern_face():
    torch.manual_seed(0)
    lfq = LFQ(dim=4, codebook_size=16, entropy_loss_weight=0.2, commit_weight=0.3, track_usage=True).train()
    z = torch.randn(3, 5, 4)
    out = lfq.quantize(z)
    (q, aux, indices), (_, _, commit, _) = lfq(z.movedim(-1, 1), return_loss_breakdown=True)
    torch.testing.assert_close(out.loss, 0.3 * commit + 0.2 * aux)
    torch.testing.assert_close(out.z_q, q.movedim(1, -1))
    assert out.indices.shape == (3, 5) and torch.equal(out.indices.flatten(), indices)
    torch.testing.assert_close(lfq.get_codebook_entry(out.indices), out.z_q)
    assert float(out.usage) == len(indices.unique()) / 16
    assert float(lfq.eval().quantize(z).loss) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="codebook_size must be a power of 2"):
        LFQ(dim=4, codebook_size=12)
    with pytest.raises(ValueError, match="dim must equal num_codebooks"):
        LFQ(dim=8, codebook_size=16)
    with pytest.raises(ValueError, match="factorized_bits must be two sizes summing to"):
        LFQ(dim=6, codebook_size=64, token_factorization=True)
    lfq = LFQ(dim=4, codebook_size=16)
    with pytest.raises(ValueError, match="x must be channels-first"):
        lfq(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        lfq(torch.randn(2, 4, 5), mask=torch.ones(2, 4, dtype=torch.bool))


def test_zero_quantizes_to_minus_one_as_the_peer():
    x = torch.tensor([[0.0, 0.5, -0.0, -2.0]]).view(1, 4, 1)
    (q, _, indices), _ = ours_as_peer(LFQ(dim=4, codebook_size=16).eval())(x)
    (r_q, _, r_indices), _ = oracle.lfq(x, 4, training=False)
    assert torch.equal(q, r_q) and q.flatten().tolist() == [-1.0, 1.0, -1.0, -1.0]
    assert torch.equal(indices, r_indices) and indices.tolist() == [2]
