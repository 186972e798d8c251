"""Run folders lose nothing: one writer, no clobbering, refused resumes, checkpoints found
again after a crash, corrupt files named. Each refusal leaves the folder byte-for-byte as it was."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lgvq.experiment.checkpoint import (
    CheckpointError,
    CheckpointFallbackWarning,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lgvq.experiment.run import load_run
from lgvq.experiment.run_folder import RESUME_MAY_CHANGE, RunFolderError
from lgvq.experiment.train import train

from .conftest import assert_same_tensors, snapshot, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4; tests work on copies (``run_copy``)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(out, "train.steps=4"), progress=False)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ---- one owner -------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from lgvq.experiment.run_folder import RunFolderLock
    with RunFolderLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_writer_is_refused_with_the_holders_pid_and_kill_9_leaves_no_stale_lock(run_copy):
    before = snapshot(run_copy)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(RunFolderError, match=f"in use by another training process \\(PID {holder.pid}\\)"):
            train(tiny_config(run_copy, "train.steps=6"), resume=True, progress=False)
        assert snapshot(run_copy) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(tiny_config(run_copy, "train.steps=6"), resume=True, progress=False)  # the OS dropped the lock
    assert latest_checkpoint(run_copy / "checkpoints").name == "step_00000006"


# ---- never clobber ---------------------------------------------------------------------

def test_fresh_run_into_a_run_folder_is_refused_and_touches_nothing(run_copy):
    before = snapshot(run_copy)
    with pytest.raises(RunFolderError) as err:
        train(tiny_config(run_copy, "train.steps=2"), progress=False)
    assert str(err.value) == (
        f"{run_copy} already holds a run (checkpoints, config.json, images, metrics.jsonl); pass --resume to "
        f"continue it, --archive to move it to {run_copy / 'archive'}/<time>/ first, or --overwrite to delete it"
    )
    assert snapshot(run_copy) == before


def test_archive_moves_the_old_run_intact_and_it_still_loads(run_copy):
    before = snapshot(run_copy)
    train(tiny_config(run_copy, "train.steps=1", "train.ckpt_every=1"), progress=False, existing="archive")
    (archive,) = (run_copy / "archive").iterdir()
    assert snapshot(archive) == before
    assert latest_checkpoint(run_copy / "checkpoints").name == "step_00000001"
    assert load_run(archive).config.train.steps == 4


def test_overwrite_replaces_the_old_run(run_copy):
    train(tiny_config(run_copy, "train.steps=1", "train.ckpt_every=1"), progress=False, existing="overwrite")
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert [line.count('"step": 1,') for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [1]


def _modules():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return {"model": model}, {"ae": torch.optim.Adam(model.parameters())}


def test_pruning_keeps_the_new_checkpoint_and_never_touches_later_steps(tmp_path):
    modules, optimizers = _modules()
    save_checkpoint(tmp_path, 10, modules, optimizers)  # e.g. left by the run before a resume from step 2
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, modules, optimizers, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000002", "step_00000003", "step_00000010"]
    assert latest_checkpoint(tmp_path).name == "step_00000003"


# ---- resume ----------------------------------------------------------------------------

def test_resume_with_a_different_config_is_refused_before_writing_and_lists_the_keys(run_copy):
    before = snapshot(run_copy)
    config = tiny_config(run_copy, "train.steps=6", "data.batch_size=8", "guidance.enabled=true")
    with pytest.raises(RunFolderError) as err:
        train(config, resume=True, progress=False)
    message = str(err.value)
    assert message.startswith(
        f"--resume with a config that differs from {run_copy / 'config.json'}: "
        "data.batch_size: 4 -> 8, guidance.enabled: False -> True. A resume may change only train.steps,"
    )
    assert "\n" not in message
    assert snapshot(run_copy) == before


def test_resume_may_change_the_documented_keys(run_copy):
    assert "train.steps" in RESUME_MAY_CHANGE and "train.ckpt_every" in RESUME_MAY_CHANGE
    train(tiny_config(run_copy, "train.steps=5", "train.ckpt_every=5", "train.log_every=5"), resume=True,
          progress=False)
    assert latest_checkpoint(run_copy / "checkpoints").name == "step_00000005"
    assert '"ckpt_every": 5' in (run_copy / "config.json").read_text()


def test_resume_to_fewer_steps_than_the_checkpoint_is_refused(run_copy):
    before = snapshot(run_copy)
    with pytest.raises(RunFolderError, match=r"train.steps=3 is before the checkpoint .*step_00000004 \(step 4\)"):
        train(tiny_config(run_copy, "train.steps=3"), resume=True, progress=False)
    assert snapshot(run_copy) == before


# ---- finding and loading checkpoints -----------------------------------------------------

def test_missing_latest_falls_back_to_the_newest_complete_checkpoint_and_says_so(run_copy):
    ckpts = run_copy / "checkpoints"
    (ckpts / "latest").unlink()
    with pytest.warns(CheckpointFallbackWarning, match=f"{ckpts / 'latest'} is missing; using {ckpts / 'step_00000004'}"):
        assert load_run(run_copy) is not None


def test_latest_naming_a_missing_step_falls_back_past_incomplete_and_corrupt_ones(tmp_path):
    modules, optimizers = _modules()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, modules, optimizers, keep=3)
    (tmp_path / "step_00000003" / "state.pt").unlink()  # incomplete
    (tmp_path / "step_00000002" / "model.safetensors").write_bytes(b"")  # corrupt
    (tmp_path / "latest").write_text("step_00000009")
    with pytest.warns(CheckpointFallbackWarning) as record:
        assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    (warning,) = record
    message = str(warning.message)
    assert message.startswith(
        f"{tmp_path / 'latest'} names 'step_00000009', which is not a complete checkpoint; "
        f"skipped {tmp_path / 'step_00000003'} is incomplete; "
        f"skipped {tmp_path / 'step_00000002' / 'model.safetensors'} (SafetensorError: "
    )
    assert message.endswith(f"); using {tmp_path / 'step_00000001'}, the newest complete checkpoint")


def test_no_loadable_checkpoint_is_none(tmp_path):
    modules, optimizers = _modules()
    save_checkpoint(tmp_path, 1, modules, optimizers)
    (tmp_path / "step_00000001" / "state.pt").write_bytes(b"garbage")
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) is None


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x13\x37 not a checkpoint " * 8,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("file", ["model.safetensors", "state.pt"])
def test_corrupt_file_is_one_line_naming_it_and_the_previous_good_checkpoint(tmp_path, file, corruption):
    modules, optimizers = _modules()
    for step in (1, 2):
        save_checkpoint(tmp_path, step, modules, optimizers)
    bad = tmp_path / "step_00000002" / file
    bad.write_bytes(CORRUPTIONS[corruption](bad.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(latest_checkpoint(tmp_path), modules, optimizers)
    message = str(err.value)
    assert message.startswith(f"{bad} is corrupt or truncated (")
    assert message.endswith(f"); the previous good checkpoint is {tmp_path / 'step_00000001'}")
    assert "\n" not in message


def test_resume_from_a_corrupt_checkpoint_is_refused_and_touches_nothing(run_copy):
    weights = run_copy / "checkpoints" / "step_00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError, match="the previous good checkpoint is .*step_00000002$"):
        train(tiny_config(run_copy, "train.steps=6"), resume=True, progress=False)
    assert snapshot(run_copy) == before


def test_stale_temporary_folders_are_removed_at_start(run_copy):
    stale = run_copy / "checkpoints" / ".tmp-ckpt-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    (run_copy / "checkpoints" / ".tmp-xyz").write_text("step_0000")
    train(tiny_config(run_copy, "train.steps=4"), resume=True, progress=False)
    assert not [p for p in (run_copy / "checkpoints").iterdir() if p.name.startswith(".tmp")]


# ---- kill -9 at random moments, then resume: the same weights, bit for bit ---------------

KILL_RUN = ["--config", "configs/shapes-vqvae.yaml", "--set", "train.steps=10", "--set", "train.ckpt_every=2",
            "--set", "train.log_every=1", "--set", "train.image_every=5", "--set", "data.batch_size=4",
            "--set", "data.size=16", "--set", "train.tensorboard=false"]


def _train_process(out: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.stderr", "ab") as stderr:  # a file: a full pipe would block the trainer
        return subprocess.Popen([sys.executable, "-m", "lgvq", "train", *KILL_RUN, "--set",
                                 f"train.out_dir={out}", *flags], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def _finished(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait() == 0, (out.parent / f"{out.name}.stderr").read_text()


def _steps_logged_since(out: Path, start: float) -> int:
    """Lines in the run's log if this process has written it since ``start``, else 0."""
    log = out / "metrics.jsonl"
    if not log.is_file() or log.stat().st_mtime < start:
        return 0
    return len(log.read_text().splitlines())


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / "step_00000010" / "model.safetensors"))


def _kill_at_random_moments(out: Path, kills: int, rng) -> int:
    """Start (or resume) training and kill -9 it, ``kills`` times; returns how many it really killed."""
    killed = 0
    for _ in range(kills):
        resume_from = latest_checkpoint(out / "checkpoints")
        start_step = checkpoint_step(resume_from) if resume_from else 0
        started = time.time()
        proc = _train_process(out, "--resume" if resume_from else "--overwrite")
        # once the log reaches step `target` (from the one that comes with the next checkpoint
        # on), wait up to the time of a step: some kills land mid-checkpoint, some mid-step
        target = rng.randint(min(start_step + 2, 9), 9)
        while proc.poll() is None and _steps_logged_since(out, started) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    return killed


def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    import random

    straight = _train_process(tmp_path / "straight")
    out = tmp_path / "killed"
    try:
        assert _kill_at_random_moments(out, 3, random.Random(12)) == 3
        _finished(_train_process(out, "--resume"), out)
        _finished(straight, tmp_path / "straight")
    finally:
        straight.kill()
        straight.wait()
    assert_same_tensors(_final_weights(tmp_path / "straight"), _final_weights(out))


# ---- TensorBoard: each step once across restarts ---------------------------------------

def test_resumed_tensorboard_stream_purges_the_steps_after_the_checkpoint(tmp_path):
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    config = tiny_config(tmp_path, "train.steps=4", "train.tensorboard=true")
    train(config, progress=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000004")  # as if killed after logging steps 3 and 4
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002")
    train(config, resume=True, progress=False)
    first, second = sorted((tmp_path / "tensorboard").iterdir())
    events = list(loader.EventFileLoader(str(second)).Load())
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [3]  # TensorBoard drops the first file's step 3, logged before the resume replaced it
    assert sorted({e.step for e in events if e.HasField("summary")}) == [3, 4]
