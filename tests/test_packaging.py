"""What a user's install sees: the wheel and sdist hold everything, the core installs and
quantizes without the language stack, the wheel's `lgvq demo` runs from an empty folder, imports
are cheap, and the repository carries its own docs.

The installs are real pip installs into fresh venvs (no system site-packages). torch, the one
large dependency, is installed once per session with ``pip --target`` from the local wheel and
linked into each venv with a ``.pth`` file, so each venv costs only its own packages; pip sees
that torch as installed and resolves everything else from lgvq's metadata.
"""

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock  # a torch dependency: present wherever torch is

ROOT = Path(__file__).resolve().parents[1]
TORCH_REQUIREMENT = f"torch=={importlib.metadata.version('torch')}"  # the local wheel of this env's torch

pytestmark = pytest.mark.slow  # builds and pip installs: about a minute or two on 2 cores


# The venvs must see only what is installed in them: no PYTHONPATH (a checkout's lgvq) from the caller.
ISOLATED = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")}


def _run(*args, cwd=None, env=ISOLATED, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _fresh_python(code: str) -> str:
    """stdout of ``code`` in a new interpreter that imports lgvq from this checkout, as a user
    runs it: without the tests' TRITON_INTERPRET (under which ``lgvq.kernels`` may import
    triton to fix its interpreter first: ``lgvq.kernels.interpreter``)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("TRITON_INTERPRET", None)
    return _run(sys.executable, "-c", code, env=environ).stdout.strip()


def _tracked_files() -> list[str]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist): no list of tracked files")
    return [name for name in names.decode().split("\0") if name]


# ---- imports and docs ----------------------------------------------------------------------

@pytest.mark.parametrize("module", ["lgvq.ops", "lgvq.quantize"])
def test_core_imports_leave_triton_unloaded(module):
    # triton costs ~0.1-0.2 s to import and serves CPU tensors only in the interpreter tests:
    # it must wait until a Triton backend is chosen.
    assert _fresh_python(f"import sys, {module}; print('triton' in sys.modules)") == "False"


# Developer machines keep design notes in a folder beside the clone; a user's clone has none.
OUTSIDE_DOCS = re.compile(r"(\.\.|/work)/shared\b|shared/(DESIGN|PAPER)\.md")


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for name in _tracked_files():
        path = ROOT / name
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="ignore")
            offenders += [f"{name}: {m.group(0)}" for m in OUTSIDE_DOCS.finditer(text)]
    assert not offenders, "files point at notes outside the repository (use docs/): " + "; ".join(offenders)


# ---- configs: shipped as package data, found by name ------------------------------------------

def test_config_names_resolve_to_shipped_configs(tmp_path, monkeypatch):
    from lgvq.experiment.config import load_config, resolve_config, shipped_configs

    monkeypatch.chdir(tmp_path)  # far from the checkout's configs/
    assert resolve_config("shapes-vqvae-lg") == shipped_configs() / "shapes-vqvae-lg.yaml"
    paper = load_config("paper/cub-vqgan-lg")  # its base: paper/base.yaml, found beside it
    assert paper.model.name == "vqgan-f16-paper" and paper.data.batch_size == 8
    (tmp_path / "shapes-vqvae-lg").write_text("train: {steps: 7}\n")  # a path beats a shipped name
    assert load_config("shapes-vqvae-lg").train.steps == 7
    with pytest.raises(FileNotFoundError, match=r"paper/cub-vqgan-lg, .*shapes-vqvae-lg"):
        resolve_config("no-such-config")


# ---- build: `python -m build` gives a wheel and an sdist that hold everything ------------------

@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> Path:
    """A folder that every xdist worker of this session shares (builds and venvs are made once)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def dists(shared_tmp) -> dict[str, Path]:
    out = shared_tmp / "dist"
    with FileLock(str(shared_tmp / "dist.lock")):
        if not out.is_dir():
            # sdist first, then the wheel from the unpacked sdist: a file the sdist lacks breaks the wheel
            partial = shared_tmp / "dist-partial"  # renamed when whole: a crash leaves no half build
            _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", partial, ROOT)
            partial.rename(out)
    return {"wheel": next(out.glob("lgvq-*.whl")), "sdist": next(out.glob("lgvq-*.tar.gz"))}


def _installed_name(tracked: str) -> str | None:
    """Where a tracked file lands in the wheel (kernels/ and configs/ ship inside lgvq), or None."""
    top, _, rest = tracked.partition("/")
    if top == "lgvq" and tracked.endswith(".py"):
        return tracked
    if top == "kernels" and tracked.endswith(".py"):
        return f"lgvq/kernels/{rest}"
    if top == "configs":
        return f"lgvq/configs/{rest}"
    return None


def test_wheel_holds_every_module_and_config(dists):
    expected = {name for name in map(_installed_name, _tracked_files()) if name}
    assert "lgvq/configs/shapes-vqvae-lg.yaml" in expected and "lgvq/kernels/nearest.py" in expected
    held = set(zipfile.ZipFile(dists["wheel"]).namelist())
    assert not expected - held, f"the wheel lacks {sorted(expected - held)}"


def test_sdist_holds_every_tracked_file(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        held = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    missing = set(_tracked_files()) - held
    assert not missing, f"the sdist lacks {sorted(missing)} (MANIFEST.in)"


# ---- installs into fresh venvs -----------------------------------------------------------------

def _pip(*args, cwd: Path) -> None:
    """This interpreter's pip (``--python`` points it at a venv), run in ``cwd``: not in the
    checkout, whose lgvq.egg-info (left by the build) pip would take for an installed lgvq."""
    result = _run(sys.executable, "-m", "pip", *args, cwd=cwd, check=False)
    if result.returncode != 0 and "No matching distribution found for torch" in result.stderr:
        pytest.skip(f"no wheel of {TORCH_REQUIREMENT} is reachable for a clean install")
    assert result.returncode == 0, f"pip {' '.join(map(str, args))} failed:\n{result.stderr}"


@pytest.fixture(scope="session")
def torch_site(shared_tmp) -> Path:
    """torch and its own dependencies, installed once from the local wheel."""
    site = shared_tmp / "torch-site"
    with FileLock(str(shared_tmp / "torch-site.lock")):
        if not (site / "torch").is_dir():
            partial = shared_tmp / "torch-site-partial"
            # --no-compile here and below: writing .pyc files costs more than the few imports save
            _pip("install", "--no-compile", "-q", "--target", partial, TORCH_REQUIREMENT, cwd=shared_tmp)
            partial.rename(site)
    return site


def _venv(path: Path, torch_site: Path, *requirements) -> Path:
    """A fresh venv at ``path`` (no system site-packages) with ``torch_site`` linked in and
    ``requirements`` pip-installed; its bin/ folder."""
    _run(sys.executable, "-m", "venv", "--without-pip", path)
    python = path / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    (site / "torch-site.pth").write_text(f"{torch_site}\n")
    _pip("--python", python, "install", "--no-compile", "-q", *requirements, cwd=path)
    return path / "bin"


@pytest.fixture(scope="session")
def core_venv(shared_tmp, dists, torch_site) -> Path:
    with FileLock(str(shared_tmp / "core-venv.lock")):
        if not (shared_tmp / "core-venv" / "bin" / "lgvq").exists():
            _venv(shared_tmp / "core-venv", torch_site, dists["wheel"])
    return shared_tmp / "core-venv" / "bin"


@pytest.fixture(scope="session")
def full_venv(shared_tmp, dists, torch_site) -> Path:
    with FileLock(str(shared_tmp / "full-venv.lock")):
        if not (shared_tmp / "full-venv" / "bin" / "lgvq").exists():
            _venv(shared_tmp / "full-venv", torch_site, f"{dists['wheel']}[text,train,tasks]")
    return shared_tmp / "full-venv" / "bin"


CORE_QUANTIZES = """
import importlib.metadata, importlib.util, re, torch
from lgvq.quantize import VectorQuantizer
from lgvq.ops import nearest_code

torch.manual_seed(0)
quantizer = VectorQuantizer(16, 4)
z = torch.randn(2, 4, 3, 3, requires_grad=True)
z_q, loss, (_, _, idx) = quantizer(z)
(z_q.sum() + loss).backward()
expected, _ = nearest_code(z.detach().movedim(1, -1).reshape(-1, 4), quantizer.codebook, backend="torch")
assert torch.equal(idx, expected) and z.grad is not None and quantizer.codebook.grad is not None
# CUDA builds of torch require triton themselves: then it is torch's, not lgvq's
torch_requires = {re.match(r"[\\w.-]+", r)[0].lower() for r in importlib.metadata.requires("torch") or []}
print(" ".join(m for m in ("transformers", "matplotlib", "yaml", "PIL", "tensorboard", "triton")
               if importlib.util.find_spec(m) is not None and m not in torch_requires))
"""


def test_core_install_quantizes_without_the_language_stack(core_venv, tmp_path):
    importable = _run(core_venv / "python", "-c", CORE_QUANTIZES, cwd=tmp_path).stdout.strip()
    assert importable == "", f"the core install pulled {importable}"


@pytest.mark.parametrize("code, extra", [
    ("import lgvq.experiment.config", "train"),
    ("import lgvq.config", "train"),  # the path before lgvq.experiment, still honoured
    ("import lgvq.data", "train"),
    ("from lgvq.text import load_text_encoder; load_text_encoder()", "text"),
])
def test_a_missing_extra_is_named(core_venv, tmp_path, code, extra):
    result = _run(core_venv / "python", "-c", code, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert f"pip install 'lgvq[{extra}]'" in result.stderr.strip().splitlines()[-1]


def test_cli_names_a_missing_extra_in_one_line(core_venv, tmp_path):
    result = _run(core_venv / "lgvq", "train", "--config", "shapes-vqvae", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "lgvq[train]" in result.stderr


def test_wheel_demo_runs_from_an_empty_folder(full_venv, tmp_path):
    _run(full_venv / "lgvq", "demo", "--steps", "5", "--quiet", cwd=tmp_path)
    report = (tmp_path / "reports" / "demo" / "README.md").read_text()
    assert "VQ-VAE + LG" in report
