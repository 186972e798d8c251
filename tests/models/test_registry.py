"""Model registry: names, what each entry builds, overrides, and errors."""

import pytest
import torch

from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.models import AttnBlock, VQModel, build_loss, build_model, get_spec, model_names
from lgvq.quantize import ClusteredVectorQuantizer, ResidualQuantizer

NAMES = ["cvq-f16-paper", "cvq-tiny", "ibq-tiny", "lfq-tiny", "rqvae-tiny", "vqgan-f16-paper", "vqgan-tiny", "vqvae-tiny"]


def test_names():
    assert model_names() == NAMES
    for name in NAMES:
        assert get_spec(name).description


def test_tiny_entries():
    vqvae = build_model("vqvae-tiny")
    assert not any(isinstance(m, AttnBlock) for m in vqvae.modules())
    loss = build_loss("vqvae-tiny")
    assert loss.discriminator is None and loss.l2_weight == 1.0 and loss.perceptual_loss is None

    vqgan = build_model("vqgan-tiny")
    assert any(isinstance(m, AttnBlock) for m in vqgan.modules())
    assert type(vqgan.quantize).__name__ == "VectorQuantizer"
    assert build_loss("vqgan-tiny").discriminator is not None

    cvq = build_model("cvq-tiny")
    assert isinstance(cvq.quantize, ClusteredVectorQuantizer) and cvq.quantize.contrastive
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert cvq.eval()(x).indices.shape == (1, 8, 8)


def test_softmax_entries():
    ibq, lfq = build_model("ibq-tiny"), build_model("lfq-tiny")
    assert isinstance(ibq.quantize, IndexPropagationQuantize) and ibq.quantize.use_entropy_loss
    assert ibq.quantize.entropy_loss_weight == 0.05 and ibq.quantize.n_e == 1024
    assert isinstance(lfq.quantize, LFQ) and lfq.quantize.codebook_size == 2**lfq.config.embed_dim == 1024
    assert lfq.quantize.entropy_loss_weight == 0.1 and lfq.quantize.commit_weight == 0.25
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for model in (ibq, lfq):
            indices = model.eval()(x).indices
            assert indices.shape == (1, 8, 8) and model.decode_indices(indices).shape == x.shape
    with pytest.raises(ValueError, match="quantizer='ibq' takes none of kmeans_init"):
        build_model("ibq-tiny", kmeans_init=True)
    with pytest.raises(ValueError, match="dim must equal num_codebooks"):
        build_model("lfq-tiny", n_embed=512)


def test_residual_entry():
    """rqvae-tiny: 4 EMA stages of K=256 in d=64; factorised cos codes by override; no k-means."""
    rq = build_model("rqvae-tiny", dead_code_threshold=0.03)
    assert isinstance(rq.quantize, ResidualQuantizer)
    assert (rq.quantize.num_stages, rq.quantize.n_e, rq.quantize.codebook_dim) == (4, 256, 64)
    assert rq.quantize.stages[3].dead_code_threshold == 0.03
    factorised = build_model("rqvae-tiny", codebook_dim=8, metric="cos").quantize
    assert factorised.stages[0].embedding.weight.shape == (256, 8) and factorised.metric == "cos"
    with pytest.raises(ValueError, match="kmeans_init is not supported by quantizer='rvq'"):
        build_model("rqvae-tiny", kmeans_init=True)


def test_paper_entries():
    with torch.device("meta"):  # 72M parameters: check the settings, skip the memory
        vqgan, cvq = build_model("vqgan-f16-paper"), build_model("cvq-f16-paper")
    for model in (vqgan, cvq):
        config = model.config
        assert (config.image_size, config.downsample_factor, config.n_embed, config.embed_dim) == (256, 16, 1024, 256)
        assert model.quantize.embedding.weight.shape == (1024, 256)
    assert vqgan.config.legacy  # the release's VectorQuantizer2 default
    assert isinstance(cvq.quantize, ClusteredVectorQuantizer)
    assert cvq.quantize.anchor == "probrandom" and cvq.quantize.metric == "l2" and cvq.quantize.contrastive
    spec = get_spec("vqgan-f16-paper")
    assert spec.loss["disc_start"] == 10000 and spec.loss["disc_weight"] == 0.8


def test_overrides_and_configs():
    model = build_model("vqgan-tiny", n_embed=32, metric="cos")
    assert model.quantize.n_e == 32 and model.quantize.metric == "cos"
    assert get_spec("vqgan-tiny").model.n_embed == 256  # the registry entry is untouched
    again = build_model(model.config)
    assert isinstance(again, VQModel) and again.config == model.config
    assert build_loss("vqgan-tiny", disc_start=7).disc_start == 7


def test_errors():
    with pytest.raises(ValueError, match="unknown model 'vqgan'; valid names: cvq-f16-paper, cvq-tiny, ibq-tiny"):
        build_model("vqgan")
    with pytest.raises(TypeError, match="unknown VQModelConfig fields"):
        build_model("vqgan-tiny", codebook_size=8)
    with pytest.raises(TypeError, match="name_or_config must be a model name or a VQModelConfig"):
        build_model(12)
