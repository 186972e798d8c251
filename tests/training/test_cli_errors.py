"""The ``lgvq`` command's mistakes and mishaps (issue 24): each ends in one line naming the argument or
file and what is allowed, exit status 2 (130 for Ctrl-C), no traceback; and the run folder stays usable."""

import errno
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import lgvq.experiment.checkpoint
import lgvq.experiment.train
from lgvq.cli import main
from lgvq.experiment.run_folder import run_contents

TINY = ["--set", "data.batch_size=4", "--set", "data.size=8", "--set", "data.eval_size=8",
        "--set", "train.tensorboard=false", "--set", "train.log_every=1"]


def _outcome(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``lgvq argv`` in this process; argparse's refusals exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _one_line_error(argv, capsys, code: int = 2) -> str:
    """The error line of a failing ``lgvq argv``, checking the exit status and that nothing else was printed
    (but argparse's usage lines and training's progress bar)."""
    status, err = _outcome(argv, capsys)
    assert status == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line and not line.startswith(("usage:", " ")) and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"lgvq {argv[0]}: "), err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--set", "train.steps=1", "--set", f"train.out_dir={out}", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files the bad invocations point at: broken YAML, a picture, a run folder whose config.json is no JSON."""
    root = tmp_path_factory.mktemp("files")
    (root / "tab.yaml").write_text("train:\n\tsteps: 3\n")
    (root / "unclosed.yaml").write_text("train:\n  steps: 3\noptim:\n  betas: [0.5, 0.9\n  base_lr: 1.0e-4\n")
    Image.new("RGB", (8, 8)).save(root / "picture.png")
    (root / "broken-run").mkdir()
    (root / "broken-run" / "config.json").write_text("{'data': oops")
    (root / "two").mkdir()
    for i in range(2):  # a folder dataset of 2 captioned images: fewer than a batch of 4
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(root / "two" / f"image{i}.png")
        (root / "two" / f"image{i}.txt").write_text("a red picture\n")
    return root


@pytest.mark.parametrize(
    "argv,named",
    [
        (["train", "--config", "{F}/tab.yaml"], "{F}/tab.yaml, line 2 column 1: not valid YAML (found character '\\t'"),
        (["train", "--config", "{F}/unclosed.yaml"], "{F}/unclosed.yaml, line 5 column 10: not valid YAML"),
        (["train", "--set", "model.overrides={n_embed: -5"], "--set model.overrides={n_embed: -5, line 1 column 13"),
        (["train", "--set", "model.overrides={n_embed: -5}"], "model.overrides: n_embed=-5 is not allowed: must be an"),
        (["train", "--set", "model.overrides={embed_dim: 0}"], "model.overrides: embed_dim=0 is not allowed"),
        (["train", "--set", "data.name=folder", "--set", "data.root={F}/two", "--set", "data.batch_size=4"],
         "data.batch_size=4 is not allowed: the folder data in {F}/two holds 2 image(s), fewer than one batch"),
        (["eval", "{F}/run", "--device", "gpu"], "argument --device: invalid choice: 'gpu' (choose from 'auto', 'cpu'"),
        (["eval", "{F}/broken-run"], "{F}/broken-run/config.json is not valid JSON ("),
        (["eval", "{F}/run", "--size", "0"], "argument --size: must be an int >= 1, got '0'"),
        (["eval", "{F}/run", "--probe-steps", "-1"], "argument --probe-steps: must be an int >= 0, got '-1'"),
        (["demo", "--steps", "0"], "argument --steps: must be an int >= 1, got '0'"),
        (["task", "vqa", "{F}/run", "--steps", "two"], "argument --steps: must be an int >= 1, got 'two'"),
        (["convert-release", "{F}/no-such.ckpt", "{F}/out"], "release checkpoint not found: {F}/no-such.ckpt"),
        (["convert-release", "{F}/picture.png", "{F}/out", "--no-guidance"],
         "{F}/picture.png is not a Lightning checkpoint: it does not load (UnpicklingError)"),
    ],
)
def test_bad_invocations_are_one_line_naming_the_argument_or_file(argv, named, files, tmp_path, capsys):
    argv = [a.replace("{F}", str(files)) for a in argv]
    if argv[0] == "train":
        argv += ["--set", f"train.out_dir={tmp_path / 'run'}", *TINY]
    line = _one_line_error(argv, capsys)
    assert named.replace("{F}", str(files)) in line
    assert run_contents(tmp_path / "run") == []  # refused before anything was written (but the folder's lock)


def test_encode_into_an_unwritable_place_names_out(run_dir, files, capsys):
    out = files / "picture.png" / "codes.pt"  # below a file: no user, root included, can write there
    line = _one_line_error(["encode", str(run_dir), str(files / "picture.png"), "--out", str(out)], capsys)
    assert line.startswith(f"lgvq encode: error: --out {out}: cannot write there (")


def _tiny_train(out: Path, *settings: str) -> list[str]:
    return ["train", "--set", f"train.out_dir={out}", *TINY, *[a for s in settings for a in ("--set", s)]]


def test_divergence_stops_training_with_the_step_and_keeps_the_nan_in_the_log(tmp_path, capsys):
    out = tmp_path / "run"
    line = _one_line_error(_tiny_train(out, "train.steps=6", "optim.base_lr=1e3", "train.ckpt_every=100"), capsys)
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert line.startswith(f"lgvq train: error: training diverged by step {last['step']} (")
    assert last["step"] < 6 and last["nll_loss"] is None and "nll_loss=nan" in line  # NaN kept visible as null
    assert all(v is not None for r in records[:-1] for v in r.values())  # the steps before were finite
    assert not list((out / "checkpoints").glob("step_*"))


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_retry(tmp_path, capsys):
    out = tmp_path / "run"
    _one_line_error(_tiny_train(out, "train.steps=6", "optim.base_lr=1e3", "train.ckpt_every=100"), capsys)
    assert (out / "config.json").is_file()  # what the failed start left
    assert main(_tiny_train(out, "train.steps=2")) == 0
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000002"]


def test_a_folder_holding_other_files_still_blocks_a_fresh_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _one_line_error(_tiny_train(out, "train.steps=2"), capsys)
    assert f"{out} already holds a run (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "mine"


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.mark.parametrize("full", ["model.safetensors", "state.pt"])
def test_a_full_disk_while_checkpointing_names_the_file(full, tmp_path, monkeypatch, capsys):
    def opening(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return _FullDisk(file) if Path(path).name == full else file

    monkeypatch.setattr(lgvq.experiment.checkpoint, "open", opening, raising=False)
    out = tmp_path / "run"
    line = _one_line_error(_tiny_train(out, "train.steps=1"), capsys)
    assert line == (f"lgvq train: error: [Errno {errno.ENOSPC}] No space left on device while writing: "
                    f"'{out / 'checkpoints' / 'step_00000001' / full}'")
    assert os.listdir(out / "checkpoints") == []  # the half-written temporary is gone


def test_ctrl_c_says_where_the_run_resumes_from(tmp_path, monkeypatch, capsys):
    real = lgvq.experiment.train.train_step

    def interrupted_at_step_3(run, optimizers, images, captions, step):
        if step == 2:  # 0-based: the third step, after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(run, optimizers, images, captions, step)

    monkeypatch.setattr(lgvq.experiment.train, "train_step", interrupted_at_step_3)
    out = tmp_path / "run"
    argv = _tiny_train(out, "train.steps=4", "train.ckpt_every=2")
    checkpoint = out / "checkpoints" / "step_00000002"
    assert _one_line_error(argv, capsys, code=130) == (
        f"lgvq train: interrupted: resume from step 2 ({checkpoint}) with the same command and --resume")
    monkeypatch.setattr(lgvq.experiment.train, "train_step", real)
    assert main([*argv, "--resume"]) == 0
    assert (out / "checkpoints" / "latest").read_text() == "step_00000004"


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lgvq.experiment.train, "train_step", interrupted)
    out = tmp_path / "run"
    assert _one_line_error(_tiny_train(out, "train.steps=4"), capsys, code=130) == (
        f"lgvq train: interrupted: {out} has no checkpoint yet: start again (the retry clears what this start left)")


def test_ctrl_c_in_another_command_is_one_line(monkeypatch, capsys):
    import lgvq.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(lgvq.cli.COMMANDS, "eval", interrupted)
    assert _one_line_error(["eval", "somewhere"], capsys, code=130) == "lgvq eval: interrupted"
