"""Checkpoints of the LG-VQ release → lgvq runs (``lgvq convert-release``).

    lgvq convert-release last.ckpt runs/celeba-release --config configs/paper/celeba-vqgan-lg.yaml \\
        --text-encoder /models/clip-vit-base-patch32

The authors' release (github 623851394/LG-VQ-language-guided-codebook-learning, a taming fork)
saves PyTorch Lightning checkpoints of its ``VQModel``: ``{"state_dict": ..., "global_step":
...}``. The result is an lgvq run folder (``config.json`` + ``checkpoints/``) that ``lgvq eval``,
``encode``, ``decode``, ``reconstruct`` and ``task`` accept, with the guidance in the
``release`` flavour so that it computes what the release computed. What goes where:

* ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, ``quantize.*``: the
  model, under the same names (lgvq uses taming's). ``quantize.embed_prob`` marks LG_cvq.py's
  CVQ model (``cvq-f16-paper``); without it the model is LG_vqgan.py's (``vqgan-f16-paper``).
  The architecture (widths, levels, attention, code grid) is read from the tensor shapes.
* ``mskTransformer.encoder.*`` (quantTransformer) → ``guidance.visual.*``;
  ``mskTransformer.decoder.layers.*`` → ``guidance.mtp.decoder.layers.*`` (the separate
  w_q / w_k / w_v projections are concatenated into torch's ``in_proj``);
  ``mask_learned_parameter`` → ``guidance.mtp.mask_vectors``; ``mlm_layer.*`` →
  ``guidance.mtp.head_*`` / ``vocab_bias``; ``wrsr_fc.*`` → ``guidance.relation_head.*``.
* ``loss.discriminator.*`` → ``loss.discriminator.*``.
* Not carried, because they are frozen pre-trained files rather than training state:
  ``clip_model.*`` (CLIP ViT-B/32: give its text tower with ``--text-encoder``) and
  ``loss.perceptual_loss.*`` (VGG16 + LPIPS: give them as ``model.loss`` vgg_path /
  lpips_path). Any other key is an error, so nothing is dropped unnoticed. The optimizer
  states are not converted: the run evaluates and encodes; training it starts fresh
  optimizers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from lgvq.guidance.release_architecture import project_configs_beside, release_guidance_architecture

GUIDANCE_PREFIXES = ("mskTransformer.", "mask_learned_parameter", "mlm_layer.", "wrsr_fc.")
MODEL_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
DISCRIMINATOR_PREFIX = "loss.discriminator."
FROZEN_PREFIXES = ("clip_model.", "loss.perceptual_loss.")

# quantTransformer block → nn.TransformerEncoderLayer, per tensor suffix
_VIT_BLOCK = {
    "attn.in_proj_weight": "self_attn.in_proj_weight",
    "attn.in_proj_bias": "self_attn.in_proj_bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "mlp.c_fc.weight": "linear1.weight",
    "mlp.c_fc.bias": "linear1.bias",
    "mlp.c_proj.weight": "linear2.weight",
    "mlp.c_proj.bias": "linear2.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
}
# the release decoder's attention blocks → nn.TransformerDecoderLayer's
_DECODER_ATTENTION = {"self_attention": "self_attn", "enc_dec_attention": "multihead_attn"}


def _layer_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if not found:
        raise ValueError(f"the checkpoint has no {prefix}<i>.* tensors")
    return max(found) + 1


def _take(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the checkpoint lacks {key!r}, which the release's VQModel always has")
    return state[key]


def guidance_state_from_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's text-supervision tensors (keys as in its VQModel) → a ``LanguageGuidance``
    state dict (flavour ``"release"``; its ``sentence_proj`` is the identity for CLIP)."""
    out = {}
    vit = "mskTransformer.encoder."
    out["visual.cls"] = _take(state, vit + "class_embedding").reshape(1, 1, -1)
    out["visual.positions"] = _take(state, vit + "positional_embedding").unsqueeze(0)
    out["visual.proj.weight"] = _take(state, vit + "proj").t()  # x @ proj = Linear with weight projᵀ
    for side in ("weight", "bias"):
        out[f"visual.norm_in.{side}"] = _take(state, f"{vit}ln_pre.{side}")
        out[f"visual.norm_out.{side}"] = _take(state, f"{vit}ln_post.{side}")
    blocks = vit + "transformer.resblocks."
    for i in range(_layer_count(state, blocks)):
        for theirs, ours in _VIT_BLOCK.items():
            out[f"visual.transformer.layers.{i}.{ours}"] = _take(state, f"{blocks}{i}.{theirs}")

    layers = "mskTransformer.decoder.layers."
    for i in range(_layer_count(state, layers)):
        src, dst = f"{layers}{i}.", f"mtp.decoder.layers.{i}."
        for theirs, ours in _DECODER_ATTENTION.items():
            for side in ("weight", "bias"):
                qkv = [_take(state, f"{src}{theirs}.w_{p}.{side}") for p in "qkv"]
                out[f"{dst}{ours}.in_proj_{side}"] = torch.cat(qkv, dim=0)
                out[f"{dst}{ours}.out_proj.{side}"] = _take(state, f"{src}{theirs}.w_concat.{side}")
        for n in (1, 2, 3):
            out[f"{dst}norm{n}.weight"] = _take(state, f"{src}norm{n}.gamma")
            out[f"{dst}norm{n}.bias"] = _take(state, f"{src}norm{n}.beta")
        for n in (1, 2):
            for side in ("weight", "bias"):
                out[f"{dst}linear{n}.{side}"] = _take(state, f"{src}ffn.linear{n}.{side}")

    mask_vectors = _take(state, "mask_learned_parameter")  # (1, L, Dt)
    out["mtp.mask_vectors"] = mask_vectors.reshape(mask_vectors.shape[-2:])
    out["mtp.vocab_bias"] = _take(state, "mlm_layer.bias").reshape(-1)
    for side in ("weight", "bias"):
        out[f"mtp.head_proj.{side}"] = _take(state, f"mlm_layer.fc.{side}")
        out[f"mtp.head_norm.{side}"] = _take(state, f"mlm_layer.ln.{side}")
        out[f"relation_head.0.{side}"] = _take(state, f"wrsr_fc.fc.{side}")
        out[f"relation_head.2.{side}"] = _take(state, f"wrsr_fc.ln.{side}")
    return out


def split_release_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"model", "guidance", "discriminator"} → their release tensors (prefixes removed for the
    model's parts); the frozen CLIP / LPIPS tensors are left out and any unknown key raises."""
    parts = {"model": {}, "guidance": {}, "discriminator": {}}
    unknown = []
    for key, value in state.items():
        if key.startswith(MODEL_PREFIXES):
            parts["model"][key] = value
        elif key.startswith(GUIDANCE_PREFIXES):
            parts["guidance"][key] = value
        elif key.startswith(DISCRIMINATOR_PREFIX):
            parts["discriminator"][key[len(DISCRIMINATOR_PREFIX):]] = value
        elif not key.startswith(FROZEN_PREFIXES):
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"the checkpoint has {len(unknown)} tensor(s) that are not the release VQModel's, e.g. "
            f"{unknown[0]!r}; not converting rather than dropping them"
        )
    if not parts["model"]:
        raise ValueError("the checkpoint has no encoder/decoder/quantize tensors: not a release VQModel")
    return parts


def model_overrides(model: Mapping[str, torch.Tensor], latent_size: int) -> dict:
    """VQModelConfig fields read from the autoencoder's tensor shapes (taming's key names)."""
    conv_in = _take(model, "encoder.conv_in.weight")
    ch = conv_in.shape[0]
    levels = _layer_count(model, "encoder.down.")
    ch_mult = tuple(_take(model, f"encoder.down.{i}.block.0.conv2.weight").shape[0] // ch for i in range(levels))
    attn_levels = [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in model]
    image_size = latent_size * 2 ** (levels - 1)
    codebook = _take(model, "quantize.embedding.weight")
    return dict(
        image_size=image_size,
        in_channels=conv_in.shape[1],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=_layer_count(model, "encoder.down.0.block."),
        attn_resolutions=tuple(image_size // 2 ** i for i in attn_levels),
        mid_attention="encoder.mid.attn_1.q.weight" in model,
        z_channels=_take(model, "encoder.conv_out.weight").shape[0],
        embed_dim=codebook.shape[1],
        n_embed=codebook.shape[0],
    )


def _code_grid_side(guidance: Mapping[str, torch.Tensor]) -> int:
    positions = _take(guidance, "mskTransformer.encoder.positional_embedding").shape[0] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"the visual-token ViT has {positions} positions, not a square code grid")
    return side


def _load_exactly(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load every given tensor; parameters the checkpoint does not give are an error, while
    lgvq's own bookkeeping buffers (usage statistics) keep their fresh values."""
    own = module.state_dict()
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"{what}: the checkpoint's {extra[0]!r} has no counterpart in lgvq's module")
    missing_params = sorted({name for name, _ in module.named_parameters()} - set(tensors))
    if missing_params:
        raise ValueError(f"{what}: the checkpoint gives no {missing_params[0]!r}")
    for key, value in tensors.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"{what}: {key} is {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in lgvq "
                "(for the guidance: is --text-encoder the text tower the release was trained with?)"
            )
    module.load_state_dict({**own, **tensors})


def check_release_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"release checkpoint not found: {path}")
    return path


def read_release_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], int, dict]:
    """(state_dict, global_step, hyper_parameters or {}) of a Lightning checkpoint of the release's VQModel."""
    path = check_release_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - a file that is no pickle fails in many ways inside the unpickler
        raise ValueError(f"{path} is not a Lightning checkpoint: it does not load ({type(error).__name__})") from error
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' mapping)")
    return ckpt["state_dict"], int(ckpt.get("global_step", 0)), dict(ckpt.get("hyper_parameters") or {})


def convert_release(checkpoint: str | Path, out_dir: str | Path, *, config: str | Path | None = None,
                    text_encoder: str | None = None, guidance: bool = True, release_config: str | Path | None = None,
                    layers: int | None = None, heads: int | None = None) -> Path:
    """Write an lgvq run for a release checkpoint into ``out_dir`` (which must not hold a run).

    config: a YAML config for everything the checkpoint does not say (data, loss files, the
    release's per-dataset loss weights: ``configs/paper/*``); the model and guidance settings
    are set from the checkpoint. text_encoder: a local CLIP ViT-B/32 folder (the release's text
    tower), needed to carry the guidance; ``guidance=False`` converts without it, on purpose.
    release_config / layers / heads: the release config the checkpoint was trained with, or its
    guidance depth and heads (``lgvq.guidance.release_architecture``: the head count must be
    stated there, here or in the checkpoint's hyper-parameters). Returns the checkpoint folder written.
    """
    from lgvq.experiment.checkpoint import save_checkpoint
    from lgvq.experiment.config import config_to_dict, load_config, read_yaml
    from lgvq.models.registry import get_spec
    from lgvq.experiment.run import build_run

    check_release_file(checkpoint)  # the file first: it is what the user named first
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a run (config.json); choose an empty folder")
    if guidance and text_encoder is None:
        raise ValueError(
            "the release's guidance needs its text encoder: pass --text-encoder DIR (a local CLIP "
            "ViT-B/32, e.g. openai/clip-vit-base-patch32), or --no-guidance to leave the guidance out"
        )
    state, step, hyper_parameters = read_release_checkpoint(checkpoint)
    parts = split_release_state(state)
    run_config = load_config(config)
    name = "cvq-f16-paper" if "quantize.embed_prob" in parts["model"] else "vqgan-f16-paper"
    spec = get_spec(name).model
    found = model_overrides(parts["model"], _code_grid_side(parts["guidance"]))
    run_config.model.name = name
    run_config.model.overrides = {k: v for k, v in found.items() if getattr(spec, k) != v}
    run_config.guidance.enabled = guidance
    if guidance:
        run_config.guidance.text_encoder = str(text_encoder)
        run_config.guidance.max_length = parts["guidance"]["mask_learned_parameter"].shape[-2]
        run_config.guidance.flavour = "release"
        run_config.guidance.mtp_input = None
        run_config.guidance.temperature = 1.0
        counted = {what: _layer_count(parts["guidance"], f"mskTransformer.{prefix}.") for what, prefix in
                   (("ViT blocks", "encoder.transformer.resblocks"), ("decoder layers", "decoder.layers"))}
        configs = [Path(release_config)] if release_config is not None else project_configs_beside(checkpoint)
        found = release_guidance_architecture(counted, hyper_parameters, {str(p): read_yaml(p) for p in configs},
                                              layers, heads)
        run_config.guidance.layers, run_config.guidance.heads = found["layers"], found["heads"]
    run_config.train.out_dir = str(out_dir)
    run_config.train.device = "cpu"

    run = build_run(run_config)
    _load_exactly(run.model, parts["model"], "model")
    if run.loss.discriminator is not None:
        _load_exactly(run.loss.discriminator, parts["discriminator"], "discriminator")
    if guidance:
        _load_exactly(run.guidance, guidance_state_from_release(parts["guidance"]), "guidance")
    run_config.train.device = "auto"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_to_dict(run_config), indent=2))
    extra = {"config": config_to_dict(run_config), "converted_from": str(Path(checkpoint).resolve())}
    return save_checkpoint(out_dir / "checkpoints", step, run.modules(), {}, extra)
