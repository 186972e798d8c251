"""VectorQuantizer's LlamaGen entropy loss option against LlamaGen's formula (the oracle in
tests/compat/magvit2_oracle.py): MAGVIT-2's entropy terms of softmax(−‖z − e‖² / τ), added
with weight ``entropy_loss_ratio`` in training only; values and gradients in float64."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lgvq.quantize import VectorQuantizer

_spec = importlib.util.spec_from_file_location("magvit2_oracle", Path(__file__).parents[1] / "compat" / "magvit2_oracle.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)


def loss_and_grads(q, z):
    z = z.detach().clone().requires_grad_(True)
    q.embedding.weight.grad = None
    loss = q.quantize(z).loss
    loss.backward()
    return loss.detach(), z.grad, q.embedding.weight.grad.clone()


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_matches_llamagen(metric, temperature):
    torch.manual_seed(0)
    plain = VectorQuantizer(23, 5, metric=metric, legacy=False, backend="torch").double()
    with_entropy = VectorQuantizer(
        23, 5, metric=metric, legacy=False, entropy_loss_ratio=0.3, entropy_temperature=temperature, backend="torch"
    ).double()
    with torch.no_grad():
        plain.embedding.weight.normal_()
    with_entropy.load_state_dict(plain.state_dict())
    z = torch.randn(2, 7, 5, dtype=torch.float64)

    base, base_dz, base_de = loss_and_grads(plain, z)
    loss, dz, de = loss_and_grads(with_entropy, z)

    zz = z.detach().clone().requires_grad_(True)
    codebook = plain.embedding.weight.detach().clone().requires_grad_(True)
    flat, codes = zz.reshape(-1, 5), codebook
    if metric == "cos":  # LlamaGen's l2-normalised z and codebook
        flat, codes = F.normalize(flat, dim=-1), F.normalize(codes, dim=-1)
    expected = 0.3 * oracle.llamagen_entropy_loss(flat, codes, temperature)
    expected.backward()
    torch.testing.assert_close(loss - base, expected.detach(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(dz - base_dz, zz.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(de - base_de, codebook.grad, rtol=1e-7, atol=1e-9)


def test_evaluation_adds_nothing():
    torch.manual_seed(0)
    with_entropy, plain = VectorQuantizer(9, 4, entropy_loss_ratio=1.0), VectorQuantizer(9, 4)
    plain.load_state_dict(with_entropy.state_dict())
    z = torch.randn(5, 4)
    torch.testing.assert_close(with_entropy.eval().quantize(z).loss, plain.eval().quantize(z).loss)
    assert not torch.allclose(with_entropy.train().quantize(z).loss, plain.train().quantize(z).loss)


def test_bad_arguments():
    with pytest.raises(ValueError, match="entropy_loss_ratio"):
        VectorQuantizer(8, 4, entropy_loss_ratio=-1.0)
    with pytest.raises(ValueError, match="entropy_temperature"):
        VectorQuantizer(8, 4, entropy_temperature=0.0)
