"""VQModel: forward/backward on a tiny config for each quantizer, encode/decode round trips."""

import pytest
import torch

from lgvq.models import VQModel, VQModelConfig
from lgvq.quantize import ClusteredVectorQuantizer

TINY = VQModelConfig(
    image_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=16,
    embed_dim=8, n_embed=32, backend="torch",
)


def images(batch=2):
    return torch.rand(batch, 3, 16, 16) * 2 - 1


@pytest.mark.parametrize("quantizer", ["vq", "ema", "cvq"])
def test_forward_backward_reaches_every_part(quantizer):
    model = VQModel(TINY.replace(quantizer=quantizer)).train()
    x = images()
    out = model(x)
    assert out.x_rec.shape == x.shape
    assert out.z_q.shape == (2, 8, 8, 8) and out.indices.shape == (2, 8, 8)
    assert out.indices.dtype == torch.int64
    for value in (out.vq_loss, out.perplexity, out.usage):
        assert value.ndim == 0 and torch.isfinite(value)

    ((out.x_rec - x).abs().mean() + out.vq_loss).backward()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    codebook_grad = model.quantize.embedding.weight.grad
    if quantizer == "ema":
        assert codebook_grad is None
    else:
        assert codebook_grad is not None and codebook_grad.abs().sum() > 0


def test_cvq_kind_builds_the_clustered_quantizer():
    model = VQModel(TINY.replace(quantizer="cvq", cvq_anchor="closest", cvq_contrastive=True))
    assert isinstance(model.quantize, ClusteredVectorQuantizer)
    assert model.quantize.anchor == "closest" and model.quantize.contrastive


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_decode_indices_equals_decode_of_z_q(metric):
    model = VQModel(TINY.replace(metric=metric)).eval()
    x = images()
    with torch.no_grad():
        z_q, indices = model.encode(x)
        assert torch.allclose(model.decode_indices(indices), model.decode(z_q), atol=1e-6)
        assert torch.allclose(model(x).x_rec, model.decode(z_q), atol=1e-6)


def test_last_layer_is_the_decoder_output_conv():
    model = VQModel(TINY)
    assert model.get_last_layer() is model.decoder.conv_out.weight


def test_bad_input_and_config():
    model = VQModel(TINY)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 16, 16\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="indices must have 3 dimensions"):
        model.decode_indices(torch.zeros(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="quantizer must be one of"):
        TINY.replace(quantizer="gumbel")
    with pytest.raises(TypeError, match="unknown VQModelConfig fields"):
        TINY.replace(codebook_size=12)


def test_config_geometry():
    assert VQModelConfig().downsample_factor == 16 and VQModelConfig().latent_size == 16
    assert TINY.latent_size == 8
