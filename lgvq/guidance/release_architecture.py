"""The depth and head count of a release checkpoint's guidance (for ``lgvq convert-release``).

The release builds its visual-token ViT and its Lmtp decoder with the same depth and head
count, from its config's ``ddconfig.mask_transformer_layer`` / ``mask_transformer_head``
(2 and 1 in every shipped ``configs_text/*.yaml``). The depth shows in a checkpoint (one set
of tensors per layer); the head count does not: heads split the same q/k/v matrices, so a
2-head model has a 1-head model's tensors and computes other losses. The head count must
therefore be stated: by Lightning's ``hyper_parameters`` in the checkpoint (when the model
saved them), by the release config (the YAML given to the release's ``main.py``, which
Lightning copies into ``LOGDIR/configs/*-project.yaml`` beside ``LOGDIR/checkpoints/``), or
by the user. Every statement must agree with the others and with the tensors, or nothing is
converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lgvq.checks import check_count

# lgvq's LanguageGuidance argument → the release's ddconfig key
RELEASE_KEYS = {"layers": "mask_transformer_layer", "heads": "mask_transformer_head"}
USER = "the user"


def stated_by_release_config(config: Mapping) -> dict[str, int]:
    """{"layers", "heads"} as far as a release config (``model.params.ddconfig``) or the
    model's Lightning hyper-parameters (``ddconfig``) state them."""
    model = config.get("model")
    params = model.get("params") if isinstance(model, Mapping) else config
    ddconfig = params.get("ddconfig") if isinstance(params, Mapping) else None
    if not isinstance(ddconfig, Mapping):
        return {}
    return {ours: ddconfig[theirs] for ours, theirs in RELEASE_KEYS.items() if theirs in ddconfig}


def project_configs_beside(checkpoint: str | Path) -> list[Path]:
    """Lightning's copies of the release config for a checkpoint in its log folder
    (``LOGDIR/checkpoints/last.ckpt`` → ``LOGDIR/configs/*-project.yaml``), oldest first."""
    return sorted((Path(checkpoint).resolve().parent.parent / "configs").glob("*-project.yaml"))


def release_guidance_architecture(tensor_layers: Mapping[str, int], hyper_parameters: Mapping,
                                  release_configs: Mapping[str, Mapping], layers: int | None = None,
                                  heads: int | None = None) -> dict[str, int]:
    """{"layers", "heads"} of a release checkpoint's guidance, or ValueError when it cannot be reproduced.

    tensor_layers: {what: count} of the layer sets found in the checkpoint (the ViT's blocks,
    the decoder's layers). hyper_parameters: the checkpoint's (``{}`` when it has none).
    release_configs: {file name: contents} of the release configs it was trained with (those
    given, or ``project_configs_beside`` it). layers, heads: what the user states (None: not stated).
    """
    statements = {"the checkpoint's hyper_parameters": stated_by_release_config(hyper_parameters)}
    statements.update({name: stated_by_release_config(config) for name, config in release_configs.items()})
    statements[USER] = {k: v for k, v in (("layers", layers), ("heads", heads)) if v is not None}
    return _agreed_architecture(tensor_layers, statements)


def _agreed_architecture(tensor_layers: Mapping[str, int], statements: Mapping[str, Mapping]) -> dict[str, int]:
    """The one depth of the tensors and the one value per key of every statement, which must agree."""
    counts = set(tensor_layers.values())
    if len(counts) != 1:
        found = ", ".join(f"{n} {what}" for what, n in tensor_layers.items())
        raise ValueError(f"the checkpoint's guidance has {found}; lgvq (like the release) builds both with one depth")
    architecture = {"layers": counts.pop()}
    sources = {"layers": "the checkpoint's tensors"}
    for source, stated in statements.items():
        for key, value in stated.items():
            try:
                check_count(f"{source}'s {key}" if source != USER else key, value)
            except TypeError as error:  # a file's wrong value is wrong content: ValueError, one line on the CLI
                raise ValueError(str(error)) from None
            if key in architecture and architecture[key] != value:
                raise ValueError(
                    f"{sources[key]} give(s) {key}={architecture[key]} but {source} says {value}; "
                    "not converting a model that cannot be reproduced"
                )
            architecture.setdefault(key, value)
            sources.setdefault(key, source)
    if "heads" not in architecture:
        raise ValueError(
            "the checkpoint does not say how many attention heads its guidance has (no hyper_parameters, "
            "no release config): pass --guidance-heads N or --release-config FILE (Python: heads=, release_config=) "
            "as it was trained (ddconfig.mask_transformer_head; every shipped release config uses 1)"
        )
    return architecture
