"""The package's floors: imports go one way, down, with no circle; the moved import paths and
``python -m lgvq`` work.

The import graph is read from the source (ast over every module under ``lgvq/`` and
``kernels/``, which ships as ``lgvq.kernels``), imports inside functions included: a lazy
import is still an arrow.
"""

import ast
import graphlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Low to high. A module may import from its own floor or below, never from above.
LAYERS = (
    ("lgvq", "lgvq.checks", "lgvq.extras", "lgvq.threads", "lgvq.moved"),
    ("lgvq.kernels",),
    ("lgvq.ops",),
    ("lgvq.quantize",),
    ("lgvq.compat",),
    ("lgvq.text", "lgvq.data"),
    ("lgvq.guidance", "lgvq.models"),
    ("lgvq.experiment",),
    ("lgvq.tasks",),  # downstream tasks score a trained run with lgvq.experiment's metrics
    ("lgvq.demo",),
    ("lgvq.cli", "lgvq.__main__"),
)


def package_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in ((ROOT / "lgvq", "lgvq"), (ROOT / "kernels", "lgvq.kernels")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name ``module`` imports; ``from a import b`` gives ``a.b`` (b may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """module → the lgvq modules it imports (a name resolves to its longest module prefix)."""
    modules = package_modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {t for n in imported_names(m, p) if (t := owner(n)) not in (None, m)} for m, p in modules.items()}


def layer(module: str) -> int:
    floors = [i for i, floor in enumerate(LAYERS) for top in floor if module == top or module.startswith(top + ".")]
    assert floors, f"{module} is on no floor: add it to LAYERS"
    return max(floors)  # "lgvq" is every module's prefix; the longest match is the highest floor


def test_every_import_goes_down_or_sideways():
    upward = sorted(f"{m} → {t}" for m, targets in import_graph().items() for t in targets if layer(t) > layer(m))
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_there_is_no_import_circle():
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' → '.join(error.args[1])}")


def test_nothing_imports_the_command_line():
    importers = sorted(m for m, targets in import_graph().items() if "lgvq.cli" in targets)
    assert importers == ["lgvq.__main__"]


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "lgvq.experiment.run" in graph["lgvq.cli"]  # imported inside a command function
    assert "lgvq.kernels" in graph["lgvq.kernels.quantize"]  # from . import HAS_TRITON


@pytest.mark.parametrize("old, name, new", [
    ("lgvq.train", "build_run", "lgvq.experiment.run"),
    ("lgvq.train", "train", "lgvq.experiment.train"),
    ("lgvq.train", "check_training_config", "lgvq.experiment.config_checks"),
    ("lgvq.train", "held_out_split", "lgvq.experiment.splits"),
    ("lgvq.train", "config_with", "lgvq.experiment.config"),
    ("lgvq.train", "open_run_folder", "lgvq.experiment.resume"),
    ("lgvq.runs", "load_run", "lgvq.experiment.run"),
    ("lgvq.config", "load_config", "lgvq.experiment.config"),
    ("lgvq.checkpoint", "atomic_write_text", "lgvq.experiment.checkpoint"),
    ("lgvq.run_folder", "RunFolderLock", "lgvq.experiment.run_folder"),
    ("lgvq.logger", "read_log", "lgvq.experiment.logger"),
    ("lgvq.evaluate", "evaluate", "lgvq.experiment.evaluate"),
    ("lgvq.convert", "convert_release", "lgvq.experiment.convert"),
    ("lgvq.comparison", "Spread", "lgvq.experiment.comparison"),
    ("lgvq.visualize", "save_image_grid", "lgvq.experiment.visualize"),
])
def test_a_moved_import_path_warns_and_gives_the_same_object(old, name, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to lgvq.experiment"):
        moved = importlib.import_module(old)
    assert getattr(moved, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        moved.not_a_name  # noqa: B018


def test_the_demo_package_keeps_the_old_module_names():
    from lgvq import demo

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation: lgvq.demo is still the place
        for name in ("run_demo", "run_seed", "DEMO_TASKS", "CONFIGS", "demo_config", "metrics_table", "ModelReport"):
            assert hasattr(demo, name), name


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always::DeprecationWarning", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_python_dash_m_lgvq_runs_the_command():
    result = _python("-m", "lgvq", "train", "--help")
    assert result.returncode == 0 and "--resume" in result.stdout
    assert "DeprecationWarning" not in result.stderr


def test_python_dash_m_lgvq_train_still_runs_train_with_a_warning():
    result = _python("-m", "lgvq.train", "--help")  # torchrun -m lgvq.train, before the move
    assert result.returncode == 0 and "--resume" in result.stdout
    assert "python -m lgvq.train is deprecated: use python -m lgvq train" in result.stderr
