"""The GPU check (bench/gpu_check.py) without a GPU: its step runner records failures,
timeouts and skips instead of stopping, and its sweep runs end to end on tiny shapes in
the interpreter (``--dry``), so the one GPU run it gets is not lost to a typo."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bench import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_steps_record_failures_timeouts_and_skips(tmp_path):
    steps = gpu_check.Steps(tmp_path, budget=60, env=dict(os.environ))
    steps.min_step_s = 0  # let a 1 s step run, to time it out quickly
    steps.run("fails", 20, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    steps.run("hangs", 1, [sys.executable, "-c", "import time; time.sleep(30)"])
    steps.run("works", 20, [sys.executable, "-c", "print('fine')"])
    steps.budget = 0  # nothing fits any more
    steps.run("late", 20, [sys.executable, "-c", "pass"])
    steps.finish()
    summary = (tmp_path / gpu_check.SUMMARY).read_text()
    assert "fails: rc=3" in summary and "boom" in summary
    assert "hangs: rc=None" in summary and "TIMED OUT" in summary
    assert "works: rc=0" in summary
    assert "late: SKIPPED" in summary
    assert (tmp_path / "fails.log").read_text().strip().endswith("boom")


@pytest.mark.triton
def test_dry_sweep_runs_every_section_without_errors(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", str(tmp_path), "--sweep-only", "--dry",
         "--section", "nearest,quantize,overflow"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    assert not errors, errors[0]
    measured = [r for r in records if "stage" not in r]
    assert {r["section"] for r in measured} == {"nearest", "quantize", "collapsed", "overflow"}
    nearest = [r for r in measured if r["section"] == "nearest"]
    assert len(nearest) == 3 and all(r["within_tolerance"] and r["agree_vs_torch"] == 1.0 for r in nearest)
