"""Test set-up: Triton kernels run in the CPU interpreter unless a GPU is present.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at the
top of the root conftest, before any lgvq module loads.
"""

import importlib.metadata
import importlib.util
import os
import re
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lgvq.kernels import HAS_TRITON, INTERPRET  # noqa: E402
from lgvq.text.local_files import MINILM_PACKAGE  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_MINILM = importlib.util.find_spec(MINILM_PACKAGE) is not None


def _release(package: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", importlib.metadata.version(package)).groups()
    return int(major), int(minor)


def interpreter_unusable() -> str | None:
    """Why triton's CPU interpreter cannot run lgvq's kernels here, or None when it can.

    Triton before 3.7 turns a scalar into a Python int with ``int()`` on a one-element array
    (the bounds of every ``range`` over a runtime value), which numpy 2.4 made an error; triton
    3.7 squeezes the array first. The GPU path does not use the interpreter.
    """
    if not (HAS_TRITON and INTERPRET) or _release("triton") >= (3, 7) or _release("numpy") < (2, 4):
        return None
    return (f"triton {importlib.metadata.version('triton')}'s interpreter fails with numpy "
            f"{importlib.metadata.version('numpy')} (int() of a 1-element array); use numpy<2.4 or triton>=3.7")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs triton")
    skip_minilm = pytest.mark.skip(reason=f"needs the embedded MiniLM ({MINILM_PACKAGE}, lgvq's 'text' extra)")
    broken = interpreter_unusable()
    for item in items:
        # Markers, not ``item.keywords``: keywords also hold the names of the folders above
        # the test, so a checkout in a folder named "gpu" would skip everything.
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("triton") and not HAS_TRITON:
            item.add_marker(skip_triton)
        if item.get_closest_marker("triton") and broken:
            item.add_marker(pytest.mark.skip(reason=broken))
        if item.get_closest_marker("minilm") and not HAS_MINILM:
            item.add_marker(skip_minilm)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    """The device Triton kernels run on here: CUDA when present, else CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
