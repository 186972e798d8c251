"""lgvq convert-release: a Lightning checkpoint in the release's VQModel layout → an lgvq run.

The checkpoint is built with the release's key names: taming's autoencoder keys (lgvq's
VQModel uses them; only the tensors the release's quantizers have are kept), the text
supervision of ``tests/guidance/release_oracle.py`` (mskTransformer, mask_learned_parameter,
mlm_layer, wrsr_fc), ``loss.discriminator.*``, and stand-ins for the frozen ``clip_model.*`` and
``loss.perceptual_loss.*`` tensors the converter leaves out. Small shapes: a vqgan-tiny
autoencoder (8x8 codes), MiniLM's 384-wide text features.
"""

import json

import pytest
import torch
from PIL import Image

from lgvq.cli import main
from lgvq.data.images import load_image
from lgvq.experiment.convert import convert_release, guidance_state_from_release
from lgvq.experiment.run import load_run
from lgvq.models import build_loss, build_model
from tests.guidance.release_oracle import ReleaseTextSupervision

RELEASE_QUANTIZER_KEYS = {"quantize.embedding.weight", "quantize.embed_prob"}  # VectorQuantizer2, CVQVectorQuantiser
TEXT_LEN = 12


@pytest.fixture(scope="module")
def text_encoder():
    from lgvq.text import load_text_encoder

    return load_text_encoder(max_length=TEXT_LEN)


def release_checkpoint(path, text_encoder, model_name="vqgan-tiny", seed=0):
    """Write a release-layout Lightning checkpoint; return (its state_dict, the lgvq model)."""
    torch.manual_seed(seed)
    model = build_model(model_name)
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # distinct from a fresh model's codebook
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith("quantize.") or k in RELEASE_QUANTIZER_KEYS}
    oracle = ReleaseTextSupervision(model.config.embed_dim, text_encoder.word_embeddings,
                                    grid=model.config.latent_size, text_len=TEXT_LEN)
    state.update(oracle.state_dict())
    discriminator = build_loss("vqgan-f16-paper").discriminator
    state.update({f"loss.discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    state["clip_model.token_embedding.weight"] = torch.zeros(4, 2)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 2, 1, 1)
    torch.save({"state_dict": state, "global_step": 1234, "epoch": 3, "optimizer_states": []}, path)
    return state, model


def test_converted_run_holds_the_release_weights_and_encodes_like_it(tmp_path, text_encoder):
    state, model = release_checkpoint(tmp_path / "last.ckpt", text_encoder)
    written = convert_release(tmp_path / "last.ckpt", tmp_path / "run", text_encoder="minilm")
    assert written.name == "step_00001234"
    run = load_run(tmp_path / "run", device="cpu")
    assert run.config.model.name == "vqgan-f16-paper" and run.config.guidance.flavour == "release"
    assert run.config.model.overrides["image_size"] == 32 and run.config.guidance.max_length == TEXT_LEN
    ours = run.model.state_dict()
    for key, value in state.items():
        if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")):
            assert torch.equal(ours[key], value), key
    for key, value in guidance_state_from_release(state).items():
        assert torch.equal(run.guidance.state_dict()[key], value), key
    disc = run.loss.discriminator.state_dict()
    assert all(torch.equal(disc[k[len("loss.discriminator."):]], v)
               for k, v in state.items() if k.startswith("loss.discriminator."))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(run.model.encode(images)[1], model.eval().encode(images)[1])


def test_cvq_checkpoint_becomes_the_cvq_model(tmp_path, text_encoder):
    state, _ = release_checkpoint(tmp_path / "cvq.ckpt", text_encoder, model_name="cvq-tiny")
    state_embed_prob = state["quantize.embed_prob"]
    convert_release(tmp_path / "cvq.ckpt", tmp_path / "run", guidance=False)
    run = load_run(tmp_path / "run", device="cpu")
    assert run.config.model.name == "cvq-f16-paper" and run.guidance is None
    assert torch.equal(run.model.quantize.embed_prob, state_embed_prob)


def test_the_cli_converts_and_eval_and_encode_accept_the_run(tmp_path, text_encoder):
    _, model = release_checkpoint(tmp_path / "last.ckpt", text_encoder)
    assert main(["convert-release", str(tmp_path / "last.ckpt"), str(tmp_path / "run"),
                 "--text-encoder", "minilm"]) == 0
    image = tmp_path / "image.png"
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
    assert main(["encode", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "codes.pt"),
                 "--device", "cpu"]) == 0
    with torch.no_grad():
        expected = model.eval().encode(load_image(image, 32)[None])[1]
    assert torch.equal(torch.load(tmp_path / "codes.pt")["indices"], expected)
    assert main(["eval", str(tmp_path / "run"), "--size", "4", "--device", "cpu",
                 "--json", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "psnr" in metrics and "recall@1_1word" in metrics  # the converted guidance was used


def test_conversion_refuses_what_it_cannot_carry(tmp_path, text_encoder):
    state, _ = release_checkpoint(tmp_path / "last.ckpt", text_encoder)
    with pytest.raises(ValueError, match="--text-encoder"):
        convert_release(tmp_path / "last.ckpt", tmp_path / "run")
    torch.save({"state_dict": {**state, "colorize": torch.zeros(3)}}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="'colorize'"):
        convert_release(tmp_path / "odd.ckpt", tmp_path / "run", guidance=False)
    without_decoder = {k: v for k, v in state.items() if not k.startswith("decoder.conv_out")}
    torch.save({"state_dict": without_decoder}, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match="decoder.conv_out"):
        convert_release(tmp_path / "partial.ckpt", tmp_path / "run", guidance=False)
    convert_release(tmp_path / "last.ckpt", tmp_path / "run", guidance=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        convert_release(tmp_path / "last.ckpt", tmp_path / "run", guidance=False)
    assert main(["convert-release", str(tmp_path / "missing.ckpt"), str(tmp_path / "other")]) == 2
