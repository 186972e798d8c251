"""ResidualQuantizer: the residual search, straight-through output, loss, each stage's EMA step on
its own inputs, decoding, and the factorised (projected, l2-normalised) codes."""

import pytest
import torch
import torch.nn.functional as F

from lgvq.ops import nearest_code
from lgvq.quantize import ResidualQuantizer, VectorQuantizer


def spread(quantizer, seed=0):
    """Codebooks that shrink stage by stage, as residuals do (the default init is ±1/K)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for stage, vq in enumerate(quantizer.stages):
            vq.embedding.weight.copy_(torch.randn(vq.n_e, vq.e_dim) * 0.5**stage)
            vq.ema_sums.copy_(vq.embedding.weight)
    return quantizer


def reference(z, codebooks, metric):
    """Eager residual VQ: stage l picks the code nearest r_l (normalised for cos), r_{l+1} = r_l − e_l."""
    residual, indices, inputs = z, [], []
    for book in codebooks:
        inputs.append(F.normalize(residual, dim=-1) if metric == "cos" else residual)
        idx = nearest_code(inputs[-1], book, metric)[0]
        indices.append(idx)
        residual = residual - book[idx]
    return torch.stack(indices, -1), inputs, z - residual


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_training_step_against_eager_stages(metric):
    """Indices, z_q and loss of the eager stages; each stage's EMA step is a VectorQuantizer's
    (same rules) fed with that stage's inputs; the gradient passes straight through (L·g for l2)."""
    rq = spread(ResidualQuantizer(12, 5, 3, beta=0.3, metric=metric, decay=0.8, dead_code_threshold=0.5))
    twins = [VectorQuantizer(12, 5, 0.3, legacy=False, metric=metric, ema=True, decay=0.8,
                             dead_code_threshold=0.5) for _ in range(3)]
    for twin, stage in zip(twins, rq.stages):
        twin.load_state_dict(stage.state_dict())
    codebooks = [F.normalize(s.codebook, dim=-1) if metric == "cos" else s.codebook.clone() for s in rq.stages]
    z = (torch.randn(4, 7, 5) * 2).requires_grad_(True)
    idx, inputs, total = reference(z.detach().reshape(-1, 5), codebooks, metric)

    torch.manual_seed(3)
    out = rq.train().quantize(z)
    assert torch.equal(out.indices.reshape(-1, 3), idx)
    torch.testing.assert_close(out.z_q.reshape(-1, 5), total)
    expected_loss = sum(F.mse_loss(x_l, book[i]) for x_l, book, i in zip(inputs, codebooks, idx.T))
    torch.testing.assert_close(out.loss, 0.3 * expected_loss)
    torch.manual_seed(3)
    for twin, x_l in zip(twins, inputs):  # same draws in the same order for the dead-code restarts
        twin.train().quantize(x_l)
    for twin, stage in zip(twins, rq.stages):
        for name, value in twin.state_dict().items():
            torch.testing.assert_close(stage.state_dict()[name], value, msg=name)
    if metric == "l2":
        upstream = torch.randn_like(z)
        (out.z_q * upstream).sum().backward()
        torch.testing.assert_close(z.grad, 3 * upstream)


def test_eval_decodes_its_indices_and_leaves_the_codebooks():
    rq = spread(ResidualQuantizer(16, 6, 4, codebook_dim=3, metric="cos")).eval()
    before = {k: v.clone() for k, v in rq.state_dict().items()}
    z = torch.randn(2, 3, 3, 6)
    out = rq.quantize(z)
    assert out.indices.shape == (2, 3, 3, 4)
    torch.testing.assert_close(rq.get_codebook_entry(out.indices), out.z_q)
    assert all(torch.equal(v, before[k]) for k, v in rq.state_dict().items())
    with pytest.raises(ValueError, match="indices must have num_stages=4"):
        rq.get_codebook_entry(out.indices[..., :2])


def test_factorised_codes_are_unit_and_the_projections_learn():
    rq = ResidualQuantizer(16, 6, 2, codebook_dim=3, metric="cos").train()
    z = torch.randn(20, 6)
    out = rq.quantize(z)
    (out.z_q.square().sum() + out.loss).backward()
    for stage in rq.stages:
        torch.testing.assert_close(stage.codebook.norm(dim=-1), torch.ones(16))
    assert rq.project_in.weight.grad.abs().sum() > 0 and rq.project_out.weight.grad.abs().sum() > 0
    assert rq.stages[0].embedding.weight.shape == (16, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_stages=0), "num_stages must be > 0"),
    (dict(codebook_dim=0), "codebook_dim must be > 0"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResidualQuantizer(**{"n_e": 8, "e_dim": 4, "num_stages": 2, **kwargs})
