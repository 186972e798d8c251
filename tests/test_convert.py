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
from lgvq.experiment.convert import GUIDANCE_PREFIXES, convert_release, guidance_state_from_release
from lgvq.experiment.run import load_run
from lgvq.guidance.semantic import sample_mask_ratio, sample_word_mask
from lgvq.models import build_loss, build_model
from lgvq.text import EncodedText
from tests.guidance.release_oracle import ReleaseTextSupervision, release_text_inputs

RELEASE_QUANTIZER_KEYS = {"quantize.embedding.weight", "quantize.embed_prob"}  # VectorQuantizer2, CVQVectorQuantiser
TEXT_LEN = 12


@pytest.fixture(scope="module")
def text_encoder():
    from lgvq.text import load_text_encoder

    return load_text_encoder(max_length=TEXT_LEN)


def release_checkpoint(path, text_encoder, model_name="vqgan-tiny", seed=0, heads=1, hyper_parameters=None):
    """Write a release-layout Lightning checkpoint (with ``hyper_parameters`` when given);
    return (its state_dict, the lgvq model)."""
    torch.manual_seed(seed)
    model = build_model(model_name)
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # distinct from a fresh model's codebook
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith("quantize.") or k in RELEASE_QUANTIZER_KEYS}
    oracle = ReleaseTextSupervision(model.config.embed_dim, text_encoder.word_embeddings,
                                    grid=model.config.latent_size, text_len=TEXT_LEN, heads=heads)
    state.update(oracle.state_dict())
    discriminator = build_loss("vqgan-f16-paper").discriminator
    state.update({f"loss.discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    state["clip_model.token_embedding.weight"] = torch.zeros(4, 2)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 2, 1, 1)
    ckpt = {"state_dict": state, "global_step": 1234, "epoch": 3, "optimizer_states": []}
    if hyper_parameters is not None:
        ckpt["hyper_parameters"] = hyper_parameters
    torch.save(ckpt, path)
    return state, model


def test_converted_run_holds_the_release_weights_and_encodes_like_it(tmp_path, text_encoder):
    state, model = release_checkpoint(tmp_path / "last.ckpt", text_encoder)
    written = convert_release(tmp_path / "last.ckpt", tmp_path / "run", text_encoder="minilm", heads=1)
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
                 "--text-encoder", "minilm", "--guidance-heads", "1"]) == 0
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


def _release_yaml(path, heads, layers=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("model:\n  params:\n    ddconfig:\n"
                    f"      mask_transformer_layer: {layers}\n      mask_transformer_head: {heads}\n")
    return path


def _losses(guidance, text_encoder, state, heads):
    """(lgvq's, the release's with ``heads``) Lgsa, Lmtp, Lras in eval mode on the same codes,
    text and word mask."""
    oracle = ReleaseTextSupervision(64, text_encoder.word_embeddings, grid=8, text_len=TEXT_LEN, heads=heads)
    oracle.load_state_dict({k: v for k, v in state.items() if k.startswith(GUIDANCE_PREFIXES)})
    gen = torch.Generator().manual_seed(2)
    tokens = text_encoder.tokenize(["a small red bird on a branch", "a sign that says open"])
    text = EncodedText(words=torch.randn(*tokens.ids.shape, text_encoder.dim, generator=gen),  # non-zero at
                       sentence=torch.randn(2, text_encoder.sentence_dim, generator=gen),  # padding, as CLIP's
                       tokens=tokens)
    z_q = torch.randn(2, 64, 8, 8, generator=gen)
    draw = torch.Generator().manual_seed(3)
    mask = sample_word_mask(text.tokens, sample_mask_ratio(draw), draw)
    theirs = oracle.eval().text_supervise(z_q, text.words, text.sentence,
                                          *release_text_inputs(text.tokens.ids, text.tokens.attention_mask, mask),
                                          text.tokens.ids)
    ours = guidance.eval()(z_q, text, generator=torch.Generator().manual_seed(3))
    return torch.stack([ours.gsa, ours.mtp, ours.ras]).detach(), torch.stack(theirs).detach()


@pytest.mark.parametrize("stated_by", ["hyper_parameters", "project-config", "release_config", "user"])
def test_a_two_head_checkpoint_converts_with_two_heads_from_what_states_them(tmp_path, text_encoder, stated_by):
    """Heads do not show in the tensors; each place that states them is read, and the converted
    guidance computes the release's losses (a 1-head model of the same tensors does not)."""
    hyper_parameters = {"ddconfig": {"mask_transformer_head": 2}} if stated_by == "hyper_parameters" else None
    ckpt = tmp_path / "logs" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state, _ = release_checkpoint(ckpt, text_encoder, heads=2, hyper_parameters=hyper_parameters)
    options = {
        "project-config": lambda: _release_yaml(tmp_path / "logs" / "configs" / "2024-project.yaml", 2) and {},
        "release_config": lambda: {"release_config": _release_yaml(tmp_path / "cub_lgvqgan.yaml", 2)},
        "user": lambda: {"heads": 2},
    }.get(stated_by, dict)()
    convert_release(ckpt, tmp_path / "run", text_encoder="minilm", **options)
    run = load_run(tmp_path / "run", device="cpu")
    assert (run.config.guidance.heads, run.config.guidance.layers) == (2, 2)
    ours, theirs = _losses(run.guidance, text_encoder, state, heads=2)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)


def test_a_two_head_checkpoint_is_refused_when_nothing_states_its_heads_or_a_statement_disagrees(
        tmp_path, text_encoder):
    ckpt = tmp_path / "logs" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state, _ = release_checkpoint(ckpt, text_encoder, heads=2)
    with pytest.raises(ValueError, match="attention heads") as refused:
        convert_release(ckpt, tmp_path / "run", text_encoder="minilm")
    assert "\n" not in str(refused.value) and not (tmp_path / "run").exists()
    config = _release_yaml(tmp_path / "logs" / "configs" / "2024-project.yaml", 2)
    with pytest.raises(ValueError, match="heads=2 but the user says 1"):
        convert_release(ckpt, tmp_path / "run", text_encoder="minilm", heads=1)
    _release_yaml(config, 2, layers=3)
    with pytest.raises(ValueError, match="layers=2 but .*2024-project.yaml says 3"):
        convert_release(ckpt, tmp_path / "run", text_encoder="minilm")
    assert main(["convert-release", str(ckpt), str(tmp_path / "run"), "--text-encoder", "minilm",
                 "--release-config", str(_release_yaml(tmp_path / "heads.yaml", "two"))]) == 2
    # the same tensors as a 1-head model: a different computation, which the right heads avoid
    from lgvq.guidance import LanguageGuidance
    one_head = LanguageGuidance(64, 8, text_encoder, flavour="release", heads=1, backend="torch")
    one_head.load_state_dict(guidance_state_from_release(state))
    ours, theirs = _losses(one_head, text_encoder, state, heads=2)
    assert not torch.allclose(ours, theirs, atol=1e-3)
