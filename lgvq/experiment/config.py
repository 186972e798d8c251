"""Experiment configuration: nested dataclasses loaded from YAML, with ``--set a.b=value``.

Unknown keys are errors (a typo must not silently train the default), values are parsed
as YAML scalars (``--set train.steps=200``, ``--set guidance.weights=[0.01,0.01,0.001]``)
and checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

from lgvq.experiment.lr_schedule import SCHEDULES
from lgvq.extras import needs_extra

with needs_extra("train"):
    import yaml


def bounded(default, *, low=None, above=None, below=None, each: int | None = None):
    """A numeric field with its allowed range: ``low <= v``, ``above < v``, ``v < below``.

    With ``each``, the field is a list of exactly that many numbers, each in the range.
    """
    bounds = {"low": low, "above": above, "below": below, "each": each}
    if each is not None:
        return field(default_factory=lambda: list(default), metadata=bounds)
    return field(default=default, metadata=bounds)


def choice(default, options: tuple[str, ...]):
    return field(default=default, metadata={"choices": options})


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes | cub | celeba | coco | textcaps | folder
    root: str | None = None
    image_size: int = bounded(32, low=1)  # must equal the model's image_size
    size: int = bounded(4096, low=1)  # shapes only: number of generated training images
    eval_size: int = bounded(256, low=1)  # images used by evaluation
    split: str = "train"
    eval_split: str | None = None  # None: the format's held-out split (val or test; a folder's only split)
    caption_mode: str = choice("random", ("random", "first"))  # lgvq.data.CAPTION_MODES
    batch_size: int = bounded(16, low=1)
    num_workers: int = bounded(0, low=0)
    skip_bad: bool = False


@dataclass
class ModelConfig:
    name: str = "vqvae-tiny"  # a registry name (lgvq.models.registry)
    overrides: dict = field(default_factory=dict)  # VQModelConfig fields, e.g. {n_embed: 512}
    loss: dict = field(default_factory=dict)  # loss arguments, e.g. {vgg_path: ..., lpips_path: ..., disc_start: 2000}


@dataclass
class GuidanceConfig:
    enabled: bool = False
    text_encoder: str | None = None  # None: the embedded all-MiniLM-L6-v2; else a local directory
    max_length: int = bounded(30, low=3)  # start and end tokens and a word (lgvq.text MIN_MAX_LENGTH)
    weights: list = bounded([1e-3, 1e-3, 1e-3], low=0, each=3)  # gsa, mtp, ras
    temperature: float = bounded(1.0, above=0)
    mtp_input: str | None = None  # None: the flavour's (leak_free for lgvq, contextual for release)
    flavour: str = choice("lgvq", ("lgvq", "release"))  # LanguageGuidance's flavour
    layers: int = bounded(2, low=1)  # depth of the visual-token ViT and the Lmtp decoder
    heads: int = bounded(1, low=1)  # their attention heads
    cache_captions: bool = True  # keep the unmasked captions' features in memory (exact: lgvq.text.cache)
    cache_dir: str | None = None  # a folder for a memory-mapped table of every caption's features (lgvq.text.table)


@dataclass
class OptimConfig:
    base_lr: float = bounded(4.5e-6, above=0)
    scale_lr: bool = True  # lr = base_lr * batch_size, as the taming / LG-VQ release does
    betas: list = bounded([0.5, 0.9], low=0, below=1, each=2)
    grad_clip: float | None = bounded(None, above=0)  # None: no clipping
    # constant (taming's, the release's) or cosine: from lr down to lr x final_lr_ratio over
    # schedule_steps (None: train.steps), then flat (lgvq.experiment.lr_schedule); set
    # schedule_steps to keep a cosine run's schedule when a resume extends train.steps
    lr_schedule: str = choice("constant", SCHEDULES)
    final_lr_ratio: float = bounded(0.1, low=0, below=1)
    schedule_steps: int | None = bounded(None, low=1)


@dataclass
class TrainConfig:
    steps: int = bounded(1000, low=1)
    seed: int = bounded(0, low=0, below=2**32)  # numpy's seed range
    log_every: int = bounded(10, low=1)
    image_every: int = bounded(200, low=1)
    ckpt_every: int = bounded(500, low=1)
    out_dir: str = "runs/default"
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    tensorboard: bool = True


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    pass


def _check_type(path: str, value, annotation):
    """Accept ``value`` for a field annotated ``annotation`` (ints widen to floats).

    Annotations are strings here (``from __future__ import annotations``), e.g. "int | None".
    """
    allowed = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}
    options = [a.strip() for a in str(annotation).split("|")]
    if value is None and "None" in options:
        return value
    if "float" in options and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    for option in options:
        kinds = allowed.get(option)
        if kinds and isinstance(value, kinds) and not (option in ("int", "float") and isinstance(value, bool)):
            return float(value) if option == "float" else value
    raise ConfigError(f"{path} must be {annotation}, got {value!r}")


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid: {', '.join(prefix + k for k in fields)}")
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value, prefix + name + ".")
        else:
            kwargs[name] = _check_type(prefix + name, value, f.type)
    return cls(**kwargs)


def config_from_dict(values: dict) -> ExperimentConfig:
    return _build(ExperimentConfig, values)


def _allowed(bounds: dict) -> str:
    parts = [f">= {bounds['low']}" if bounds["low"] is not None else None,
             f"> {bounds['above']}" if bounds["above"] is not None else None,
             f"< {bounds['below']}" if bounds["below"] is not None else None]
    return " and ".join(p for p in parts if p)


def _in_range(value, bounds: dict) -> bool:
    return ((bounds["low"] is None or value >= bounds["low"]) and (bounds["above"] is None or value > bounds["above"])
            and (bounds["below"] is None or value < bounds["below"]))


def _check_field(key: str, value, meta) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={value!r} is not allowed: must be one of {', '.join(meta['choices'])}")
    if "low" not in meta or value is None:
        return
    if meta["each"] is not None:
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value)
        if not numbers or len(value) != meta["each"] or not all(_in_range(v, meta) for v in value):
            raise ConfigError(f"{key}={value!r} is not allowed: must be {meta['each']} numbers, each {_allowed(meta)}")
    elif not _in_range(value, meta):
        raise ConfigError(f"{key}={value!r} is not allowed: must be {_allowed(meta)}")


def check_config(config: ExperimentConfig) -> ExperimentConfig:
    """Every field within its range or choices (ConfigError naming the key, the value and what is
    allowed); returns ``config``. What needs the model registry or the data is checked by
    ``lgvq.experiment.config_checks.check_training_config``."""
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for f in dataclasses.fields(part):
            _check_field(f"{section.name}.{f.name}", getattr(part, f.name), f.metadata)
    return config


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = _parse_yaml(raw, f"--set {item}")
    return values


def _parse_yaml(text, source: str):
    """``text`` (a string or an open file) parsed as YAML; a syntax error is a ConfigError naming
    ``source`` and the line (a tab in the indentation is the usual one)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        hint = "; indent with spaces: YAML does not allow tabs" if "\\t" in problem else ""
        raise ConfigError(f"{source}{where}: not valid YAML ({problem}){hint}") from None


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_sections else value
    return merged


def read_yaml(path: str | Path) -> dict:
    """A YAML config as a dict; a ``base: other.yaml`` key (relative to this file) is read
    first and this file's values are merged over it, so variants state only what differs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        values = _parse_yaml(f, str(path)) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    base = values.pop("base", None)
    return _merge(read_yaml(path.parent / base), values) if base else values


def shipped_configs() -> Path:
    """The folder of the configs that ship with lgvq: the package data ``lgvq.configs`` of an
    install, or the repository's ``configs/`` when lgvq runs from a source tree it was not
    installed from (``PYTHONPATH=.``), where ``lgvq.configs`` is not importable."""
    try:
        return Path(importlib.resources.files("lgvq.configs"))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def resolve_config(name: str | Path) -> Path:
    """A config file: ``name`` itself when it is a file, else the shipped config of that name,
    with or without ``.yaml`` (``shapes-vqvae-lg``, ``paper/cub-vqgan-lg.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_configs()
    for candidate in (shipped / path, shipped / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(shipped).with_suffix("")) for p in shipped.rglob("*.yaml"))
    raise FileNotFoundError(f"config file not found: {name} (not a file, nor a shipped config: {', '.join(names)})")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config — a file, or a shipped config's name (``resolve_config``) — or start
    from defaults when ``path`` is None, and apply overrides."""
    values = read_yaml(resolve_config(path)) if path is not None else {}
    return check_config(config_from_dict(apply_overrides(values, list(overrides))))


def config_to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)


def config_with(config: ExperimentConfig, **sections) -> ExperimentConfig:
    """A copy of ``config`` with whole fields of sections replaced: config_with(c, train={"steps": 5})."""
    replaced = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(config, **replaced)
