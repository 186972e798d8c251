"""Checkpoints that lose nothing: written atomically, resumed exactly.

A checkpoint is a folder ``step_<step, 8 digits>/`` holding ``model.safetensors`` (every trained
module's weights, prefixed by its name) and ``state.pt`` (optimizer states, step, RNG
states, config). It is written to a temporary folder and renamed into place, so a crash
mid-write leaves the previous checkpoint untouched; ``latest`` is a small text file
replaced atomically.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def _module_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return tensors


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write ``directory/step_<step>/`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-ckpt-"))
    try:
        save_file(_module_tensors(modules), str(tmp / "model.safetensors"))
        state = {
            "step": step,
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "rng": rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(directory / LATEST, final.name)
    for old in sorted(directory.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load_weights(path: str | Path, modules: dict[str, torch.nn.Module], strict: bool = True) -> None:
    """Load ``model.safetensors`` of a checkpoint folder into the named modules."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {file}")
    tensors = load_file(str(file))
    for name, module in modules.items():
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if strict and not own and module.state_dict():
            raise ValueError(f"checkpoint {file} has no weights for {name!r}")
        module.load_state_dict(own, strict=strict)


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict:
    """Restore weights, optimizer states and RNG states; return the saved state (step, extra)."""
    path = Path(path)
    load_weights(path, modules)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    set_rng_state(state["rng"])
    return state
