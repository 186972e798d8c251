"""The checks a training config passes before anything is built or written: the config's own
bounds (``config.check_config``), then what it asks of the model, the loss and the data."""

from __future__ import annotations

import inspect
from pathlib import Path

from lgvq.data import DATASET_NAMES
from lgvq.experiment.config import ConfigError, DataConfig, ExperimentConfig, check_config
from lgvq.experiment.splits import check_split
from lgvq.models.losses import VQLPIPSWithDiscriminator
from lgvq.models.registry import get_spec
from lgvq.models.vqmodel import VQModelConfig


def check_data_config(data: DataConfig) -> None:
    """The dataset format is known, its root given and present, its splits exist."""
    if data.name not in DATASET_NAMES:
        raise ConfigError(f"data.name={data.name!r} is not a known dataset format: must be one of "
                          f"{', '.join(DATASET_NAMES)}")
    if data.name == "shapes" and data.root is not None:
        raise ConfigError(f"data.root={data.root!r} is not allowed with data.name=shapes (generated data): leave it unset")
    if data.name != "shapes":
        if data.root is None:
            raise ConfigError(f"data.root is not set: data.name={data.name} needs the dataset folder")
        if not Path(data.root).is_dir():
            raise ConfigError(f"data.root={data.root!r} does not exist: must be the folder of a {data.name} dataset "
                              "(layouts: README 'Your own images', lgvq/data/formats.py)")
    check_split("data.split", data.name, data.split)
    if data.eval_split is not None:
        check_split("data.eval_split", data.name, data.eval_split)


#: VQModelConfig fields that count something, so must be >= 1; checked here, under the names
#: the user wrote in model.overrides, rather than later by the layers under their own names.
MODEL_COUNTS = ("image_size", "in_channels", "ch", "z_channels", "embed_dim", "n_embed")


def model_config(config: ExperimentConfig) -> VQModelConfig:
    """The VQModelConfig that ``model.name`` and ``model.overrides`` describe (ConfigError if none)."""
    spec = get_spec(config.model.name)
    try:
        model = spec.model.replace(**config.model.overrides)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.overrides={config.model.overrides!r} is not allowed: {error}") from error
    for name in MODEL_COUNTS:
        value = getattr(model, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.overrides: {name}={value!r} is not allowed: must be an int >= 1")
    return model


def check_training_config(config: ExperimentConfig) -> None:
    """Everything a training run needs from ``config``, checked before anything is built or written."""
    check_config(config)
    model = model_config(config)
    if config.data.image_size != model.image_size:
        raise ConfigError(
            f"data.image_size={config.data.image_size} does not fit the model: {config.model.name} takes "
            f"{model.image_size}x{model.image_size} images (set data.image_size={model.image_size}, or "
            f"model.overrides={{image_size: {config.data.image_size}}})"
        )
    loss_args = set(inspect.signature(VQLPIPSWithDiscriminator).parameters)
    unknown = sorted(set(config.model.loss) - loss_args)
    if unknown:
        raise ConfigError(f"model.loss has unknown key(s) {', '.join(unknown)}: must be among {', '.join(sorted(loss_args))}")
    check_data_config(config.data)
