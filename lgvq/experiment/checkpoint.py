"""Checkpoints that lose nothing: written atomically, resumed exactly, found again after a crash.

A checkpoint is a folder ``step_<step, 8 digits>/`` holding ``model.safetensors`` (every trained
module's weights, prefixed by its name) and ``state.pt`` (optimizer states, step, RNG
states, config). It is written to a temporary folder and renamed into place, so a crash
mid-write leaves the previous checkpoint untouched; ``latest`` is a small text file
replaced atomically. When ``latest`` is missing or names no complete checkpoint, the newest
complete checkpoint that loads is used, with a warning saying which. A file that does not
load raises ``CheckpointError``, one line naming the file and the previous good checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
TMP_PREFIX = ".tmp-"  # every temporary entry a writer makes in a checkpoint folder
_STEP_NAME = re.compile(r"step_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and what to use instead."""


class CheckpointFallbackWarning(UserWarning):
    """``latest`` was unusable and an older complete checkpoint was picked."""


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


def atomic_write_text(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` in one step: written to a temporary beside it, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    os.close(fd)
    try:
        _write(Path(tmp), path, lambda f: f.write(text.encode()))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(path: Path, shown: Path, write) -> None:
    """``write(file)`` into ``path``, flushed to disk; a failed write (a full disk) is an OSError
    naming ``shown``, where the file goes once complete.

    Both serializers write through this Python file object, so a full disk surfaces as the OS's
    own error: given a path, torch's zip writer reports it as "enforce fail ... unexpected pos".
    The weights are serialized in memory first (one copy of the weights, not of the optimizer
    states, which torch.save streams)."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror or error} while writing", str(shown)) from None


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``step_<N>`` checkpoint folder, or None for any other name."""
    match = _STEP_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def step_folders(directory: str | Path) -> list[Path]:
    """The ``step_<N>`` folders of ``directory``, oldest step first (complete or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_complete(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / STATE).is_file()


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete what interrupted writers left in ``directory`` (``.tmp-*``); returns how many.

    Only safe while no other process writes there: the trainer calls it holding the run lock.
    """
    directory = Path(directory)
    stale = list(directory.glob(TMP_PREFIX + "*")) if directory.is_dir() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write ``directory/step_<step>/`` atomically, point ``latest`` at it and keep it and
    the ``keep - 1`` newest complete checkpoints before it. Checkpoints of later steps are
    never pruned: they are not older, whatever a resume from an earlier step left behind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=TMP_PREFIX + "ckpt-"))
    try:
        _write(tmp / WEIGHTS, final / WEIGHTS, lambda f: f.write(safetensors_bytes(_module_tensors(modules))))
        state = {
            "step": step,
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "rng": rng_state(),
            "extra": extra or {},
        }
        _write(tmp / STATE, final / STATE, lambda f: torch.save(state, f))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, final.name)
    _prune_before(directory, step, keep - 1)
    return final


def _prune_before(directory: Path, step: int, keep: int) -> None:
    """Delete the checkpoints of steps before ``step`` but the ``keep`` newest complete ones."""
    earlier = [p for p in step_folders(directory) if checkpoint_step(p) < step]
    kept = [p for p in earlier if is_complete(p)][-keep:] if keep > 0 else []
    for old in earlier:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(file))


def _read_state(file: Path) -> dict:
    state = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not {"step", "optimizers", "rng"} <= state.keys():
        raise ValueError("not a checkpoint state (needs step, optimizers and rng)")
    return state


def _load_failure(folder: Path) -> str | None:
    """Why ``folder``'s checkpoint does not load (a file and a reason), or None if it does."""
    for file, read in ((folder / WEIGHTS, _read_weights), (folder / STATE, _read_state)):
        try:
            read(file)
        except Exception as error:  # noqa: BLE001 - any failure to read makes the file unusable
            return f"{file} ({_first_line(error)})"
    return None


def previous_good_checkpoint(folder: Path) -> Path | None:
    """The newest complete, loadable checkpoint of an earlier step than ``folder``'s."""
    step = checkpoint_step(folder)
    if step is None:
        return None
    earlier = [p for p in step_folders(folder.parent) if checkpoint_step(p) < step and is_complete(p)]
    return next((p for p in reversed(earlier) if _load_failure(p) is None), None)


def _corrupt(file: Path, error: BaseException) -> CheckpointError:
    message = f"{file} is corrupt or truncated ({_first_line(error)})"
    if checkpoint_step(file.parent) is None:  # a loose file, not part of a run's checkpoints
        return CheckpointError(message)
    previous = previous_good_checkpoint(file.parent)
    advice = (f"the previous good checkpoint is {previous}" if previous is not None
              else "there is no earlier loadable checkpoint")
    return CheckpointError(f"{message}; {advice}")


def _pointed_checkpoint(directory: Path) -> tuple[Path | None, str]:
    """The complete checkpoint ``latest`` names, or None and what is wrong with ``latest``."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None, f"{pointer} is missing"
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{pointer} is unreadable ({_first_line(error)})"
    target = directory / name
    if checkpoint_step(name) is None or not is_complete(target):
        return None, f"{pointer} names {name!r}, which is not a complete checkpoint"
    return target, ""


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``latest`` names; when ``latest`` is missing or broken, the newest complete
    checkpoint that loads (warning which). None when the folder holds no usable checkpoint."""
    directory = Path(directory)
    target, problem = _pointed_checkpoint(directory)
    if target is not None:
        return target
    skipped = []
    for candidate in reversed(step_folders(directory)):
        failure = _load_failure(candidate) if is_complete(candidate) else f"{candidate} is incomplete"
        if failure is None:
            unusable = "".join(f"; skipped {s}" for s in skipped)
            warnings.warn(f"{problem}{unusable}; using {candidate}, the newest complete checkpoint",
                          CheckpointFallbackWarning, stacklevel=2)
            return candidate
        skipped.append(failure)
    return None


def load_weights(path: str | Path, modules: dict[str, torch.nn.Module], strict: bool = True) -> None:
    """Load ``model.safetensors`` of a checkpoint folder into the named modules."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {file}")
    try:
        tensors = _read_weights(file)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise _corrupt(file, error) from error
    for name, module in modules.items():
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if strict and not own and module.state_dict():
            raise CheckpointError(f"checkpoint {file} has no weights for {name!r}")
        try:
            module.load_state_dict(own, strict=strict)
        except RuntimeError as error:
            raise CheckpointError(
                f"{file}: the weights of {name!r} do not fit the model built from the config ({_first_line(error)})"
            ) from error


def load_checkpoint(
    path: str | Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> dict:
    """Restore weights, optimizer states and RNG states; return the saved state (step, extra)."""
    path = Path(path)
    load_weights(path, modules)
    file = path / STATE
    try:
        state = _read_state(file)
    except Exception as error:  # noqa: BLE001 - torch.load raises many error types
        raise _corrupt(file, error) from error
    for name, opt in optimizers.items():
        if name not in state["optimizers"]:
            raise CheckpointError(f"{file} has no state for optimizer {name!r}")
        try:
            opt.load_state_dict(state["optimizers"][name])
        except ValueError as error:
            raise CheckpointError(f"{file}: optimizer {name!r} does not fit ({_first_line(error)})") from error
    set_rng_state(state["rng"])
    return state
