"""What a user's install sees: cheap imports and a repository that carries its own docs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(code: str, **env) -> str:
    """stdout of ``code`` in a new interpreter that imports lgvq from this checkout."""
    import os

    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True)
    return result.stdout.strip()


def test_ops_and_quantizers_import_without_triton():
    # triton costs ~0.1-0.2 s to import and serves CPU tensors only in the interpreter tests:
    # it must wait until a Triton backend is chosen.
    loaded = _fresh_python("import sys, lgvq.ops, lgvq.quantize; print('triton' in sys.modules)")
    assert loaded == "False"


def _tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist): no list of tracked files")
    return [ROOT / name for name in names.decode().split("\0") if name]


# Developer machines keep design notes in a folder beside the clone; a user's clone has none.
OUTSIDE_DOCS = re.compile(r"(\.\.|/work)/shared\b|shared/(DESIGN|PAPER)\.md")


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in OUTSIDE_DOCS.finditer(text)]
    assert not offenders, "files point at notes outside the repository (use docs/): " + "; ".join(offenders)
