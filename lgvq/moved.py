"""Import paths that moved when the application modules went into ``lgvq.experiment``: the old
paths keep working for one release, with a DeprecationWarning naming the new one.

No file sits at an old path: a finder on ``sys.meta_path`` (installed by ``lgvq/__init__``)
answers ``import lgvq.train`` with a module that looks each name up in the modules the old
one was split into. ``python -m lgvq.train`` (``torchrun -m lgvq.train``) still runs
``lgvq train``. Names here are strings, so this module imports nothing of lgvq.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

_X = "lgvq.experiment."
# old module → the modules that now hold its names, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "lgvq.train": (_X + "train", _X + "run", _X + "config_checks", _X + "splits", _X + "batches",
                   _X + "distributed", _X + "resume", _X + "config"),
    "lgvq.config": (_X + "config",),
    "lgvq.checkpoint": (_X + "checkpoint",),
    "lgvq.run_folder": (_X + "run_folder",),
    "lgvq.runs": (_X + "run",),
    "lgvq.logger": (_X + "logger",),
    "lgvq.evaluate": (_X + "evaluate",),
    "lgvq.convert": (_X + "convert",),
    "lgvq.comparison": (_X + "comparison",),
    "lgvq.visualize": (_X + "visualize",),
}
# what ``python -m OLD`` runs now
MOVED_COMMANDS = {"lgvq.train": "train"}


def moved_message(old: str) -> str:
    return f"{old} moved to {MOVED[old][0]}; the old import path goes away in the next release"


def _lookup(old: str):
    def __getattr__(name: str):
        for new in MOVED[old]:
            module = importlib.import_module(new)
            if name in vars(module):
                return vars(module)[name]
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {MOVED[old][0]})")

    return __getattr__


def _command_code(old: str) -> str:
    return (
        "import runpy, sys, warnings\n"
        f"warnings.warn('python -m {old} is deprecated: use python -m lgvq {MOVED_COMMANDS[old]} "
        f"(torchrun -m lgvq {MOVED_COMMANDS[old]})', DeprecationWarning)\n"
        f"sys.argv[1:1] = [{MOVED_COMMANDS[old]!r}]\n"
        "runpy.run_module('lgvq', run_name='__main__')\n"
    )


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader of the old paths (``MOVED``)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a plain module

    def exec_module(self, module) -> None:
        # stacklevel 2 skips importlib's frames: the warning points at the importing line
        warnings.warn(moved_message(module.__name__), DeprecationWarning, stacklevel=2)
        importlib.import_module(MOVED[module.__name__][0])  # a missing extra fails at import, as before
        module.__getattr__ = _lookup(module.__name__)

    def get_code(self, fullname):
        """The code ``python -m OLD`` runs (runpy asks for it)."""
        if fullname not in MOVED_COMMANDS:
            raise ImportError(f"{fullname} moved to {MOVED[fullname][0]} and runs nothing with -m")
        return compile(_command_code(fullname), f"<{fullname}>", "exec")


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
