"""A training run folder has one writer and is never clobbered.

* ``RunFolderLock``: an exclusive ``fcntl.flock`` on ``<run>/.lock`` held while training. The
  OS drops it when the process ends, however it ends (kill -9 included), so a lock is never
  stale; a second writer is refused with the holder's PID.
* ``clear_for_fresh_run``: a fresh run into a folder that already holds a run is refused
  unless told what to do with the old one: ``archive`` moves it to ``<run>/archive/<UTC time>/``
  (itself a run folder that ``lgvq eval`` reads), ``overwrite`` deletes it. What a start that
  failed before its first checkpoint left (only files a run writes, no checkpoint) is no run:
  nothing can resume or evaluate it, so the retry clears it without being told.
* ``check_resume_config``: a resume may change only ``RESUME_MAY_CHANGE``; any other
  difference from the run's ``config.json`` is refused, listing the keys, before anything is
  written.

No torch here: the CLI imports this module before it knows whether it will train.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

LOCK_NAME = ".lock"
ARCHIVE_DIR = "archive"
EXISTING_RUN = ("refuse", "archive", "overwrite")  # what a fresh run does with a run already there
#: Keys a resume may change: how long to train, how often to log, image and checkpoint, where
#: and with how many loader workers. Anything else (model, data, optimizer, seed, guidance)
#: changes what the saved weights and optimizer states mean, so it needs a new run.
#: What a training run writes into its folder; a folder holding only these and no checkpoint
#: was left by a start that failed before its first checkpoint.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "images", "tensorboard", "checkpoints")
RESUME_MAY_CHANGE = (
    "train.steps", "train.log_every", "train.image_every", "train.ckpt_every", "train.tensorboard",
    "train.device", "train.out_dir", "data.num_workers", "data.eval_size", "data.eval_split",
)


class RunFolderError(ValueError):
    """The run folder's state does not allow what was asked; the message says what would."""


class RunFolderLock:
    """Exclusive ownership of a run folder for the duration of a ``with`` block."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{self.folder} is in use by another training process (PID {holder}); wait for it to end "
                "or stop it, or train into another train.out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def run_contents(folder: Path) -> list[str]:
    """What of a previous run ``folder`` holds: everything but the lock and the archive."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in (LOCK_NAME, ARCHIVE_DIR))


def clear_for_fresh_run(folder: str | Path, existing: str = "refuse") -> Path | None:
    """Make ``folder`` ready for a fresh run; returns the archive folder when one was made.

    Call holding the folder's ``RunFolderLock``.
    """
    if existing not in EXISTING_RUN:
        raise ValueError(f"existing must be one of {EXISTING_RUN}, got {existing!r}")
    folder = Path(folder)
    contents = run_contents(folder)
    if not contents:
        return None
    if failed_start(folder, contents):
        existing = "overwrite"
    if existing == "refuse":
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        raise RunFolderError(
            f"{folder} already holds a run ({shown}); pass --resume to continue it, --archive to move it "
            f"to {folder / ARCHIVE_DIR}/<time>/ first, or --overwrite to delete it"
        )
    if existing == "overwrite":
        for name in contents:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return None
    archive = _new_archive(folder / ARCHIVE_DIR)
    for name in contents:
        os.replace(folder / name, archive / name)
    return archive


def failed_start(folder: Path, contents: list[str]) -> bool:
    """Whether ``contents`` of ``folder`` are what a start left that failed before its first
    checkpoint: only entries a run writes, and no ``checkpoints/step_*`` folder."""
    return set(contents) <= set(RUN_ENTRIES) and not any((folder / "checkpoints").glob("step_*"))


def saved_config(path: Path) -> dict:
    """A run's ``config.json`` as a dict, or a ValueError naming the file when it is not JSON."""
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}): it is not a config lgvq wrote") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} must hold a JSON object of config sections")
    return values


def _new_archive(parent: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1000):
        path = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunFolderError(f"could not create a new archive folder under {parent}")


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (saved value, new value)} for every key whose value differs."""
    old, now = _flatten(saved), _flatten(json.loads(json.dumps(new)))  # JSON-normalised, as saved
    return {k: (old.get(k), now.get(k)) for k in sorted(old.keys() | now.keys()) if old.get(k) != now.get(k)}


def check_resume_config(saved: dict, new: dict, config_file: Path) -> None:
    """Refuse a resume whose config differs from the run's in a key outside RESUME_MAY_CHANGE."""
    changed = {k: v for k, v in config_changes(saved, new).items() if k not in RESUME_MAY_CHANGE}
    if changed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise RunFolderError(
            f"--resume with a config that differs from {config_file}: {listed}. A resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)}; train a new run (another train.out_dir, or --archive) to change the rest"
        )
