"""The ``lgvq`` command: a short end-to-end flow, and bad arguments ending in clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lgvq import cli
from lgvq.cli import main

from .conftest import snapshot

REPO = Path(__file__).resolve().parents[2]

TINY = ["--set", "train.steps=2", "--set", "data.batch_size=4", "--set", "data.size=8", "--set", "data.eval_size=8",
        "--set", "train.tensorboard=false", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", "configs/shapes-vqvae.yaml", "--set", f"train.out_dir={out}", *TINY]) == 0
    return out


@pytest.fixture
def image_files(tmp_path):
    files = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        files.append(str(path))
    return files


def test_eval_prints_and_writes_metrics(run_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(run_dir), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"psnr", "ssim", "usage_percent", "perplexity"} <= metrics.keys()
    assert "psnr" in capsys.readouterr().out


def test_encode_decode_reconstruct(run_dir, tmp_path, image_files):
    codes = tmp_path / "codes.pt"
    assert main(["encode", str(run_dir), *image_files, "--out", str(codes)]) == 0
    payload = torch.load(codes)
    assert payload["indices"].shape == (2, 8, 8) and payload["files"] == image_files
    assert main(["decode", str(run_dir), str(codes), "--out", str(tmp_path / "dec")]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["img0.png", "img1.png"]  # the sources' names
    assert main(["reconstruct", str(run_dir), *image_files, "--out", str(tmp_path / "rec")]) == 0
    assert (tmp_path / "rec" / "reconstructions.png").is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--config", "no/such.yaml"], "config file not found: no/such.yaml"),
        (["train", "--set", "train.stepz=3"], "unknown config key(s) train.stepz"),
        (["train", "--set", "train.steps"], "--set expects key=value"),
        (["train", "--set", "model.name=vqvae-huge"], "unknown model 'vqvae-huge'"),
        (["train", "--set", "data.name=cub", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
        (["eval", "/no/such/run"], "not a training run folder"),
    ],
)
def test_bad_arguments_fail_clearly(argv, message, capsys, tmp_path):
    argv = argv + ["--set", f"train.out_dir={tmp_path}"] if argv[0] == "train" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lgvq {argv[0]}: error:") and message in err


def test_bad_image_and_codes_fail_clearly(run_dir, tmp_path, capsys):
    garbage = tmp_path / "bad.jpg"
    garbage.write_bytes(b"not an image")
    assert main(["encode", str(run_dir), str(garbage), "--out", str(tmp_path / "c.pt")]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    codes = tmp_path / "oob.pt"
    torch.save({"indices": torch.full((1, 8, 8), 9999)}, codes)
    assert main(["decode", str(run_dir), str(codes), "--out", str(tmp_path / "d")]) == 2
    assert "must lie in [0, 256)" in capsys.readouterr().err


@pytest.mark.minilm  # the task reads the captions with the default encoder
def test_task_runs_on_a_trained_model(run_dir, capsys):
    assert main(["task", "vqa", str(run_dir), "--steps", "2"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["task", "painting", str(run_dir)]) == 2
    assert "unknown task 'painting'" in capsys.readouterr().err
    assert main(["task", "unconditional", str(run_dir), "--fid-weights", str(run_dir / "no-such.pth")]) == 2
    assert "Inception weights not found" in capsys.readouterr().err


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.strip()


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_fresh_train_into_a_run_folder_exits_2_and_touches_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["train", "--config", "configs/shapes-vqvae.yaml", "--set", f"train.out_dir={run_copy}", *TINY]) == 2
    assert _err(capsys).startswith(f"lgvq train: error: {run_copy} already holds a run (")
    assert snapshot(run_copy) == before


def test_resume_and_overwrite_together_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", "--overwrite"])
    assert exit_.value.code == 2
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting,message",
    [
        ("data.batch_size=0", "data.batch_size=0 is not allowed: must be >= 1"),
        ("data.batch_size=-1", "data.batch_size=-1 is not allowed: must be >= 1"),
        ("train.ckpt_every=0", "train.ckpt_every=0 is not allowed: must be >= 1"),
        ("train.log_every=0", "train.log_every=0 is not allowed: must be >= 1"),
        ("train.steps=-3", "train.steps=-3 is not allowed: must be >= 1"),
        ("optim.betas=[0.5,1.0]", "optim.betas=[0.5, 1.0] is not allowed: must be 2 numbers, each >= 0 and < 1"),
        ("guidance.temperature=0", "guidance.temperature=0.0 is not allowed: must be > 0"),
        ("train.device=gpu", "train.device='gpu' is not allowed: must be one of auto, cpu, cuda"),
        ("data.image_size=64", "data.image_size=64 does not fit the model: vqvae-tiny takes 32x32 images (set "
                               "data.image_size=32, or model.overrides={image_size: 64})"),
        ("data.name=imagenet", "data.name='imagenet' is not a known dataset format: must be one of shapes, cub, "
                               "celeba, coco, textcaps, folder"),
        ("data.name=folder", "data.root is not set: data.name=folder needs the dataset folder"),
        ("model.loss={disc_strat: 5}", "model.loss has unknown key(s) disc_strat: must be among "),
    ],
)
def test_bad_config_values_are_one_line_before_anything_is_written(setting, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--set", f"train.out_dir={out}", "--set", setting]) == 2
    assert _err(capsys).startswith(f"lgvq train: error: {message}")
    assert not out.exists()


def test_every_numeric_config_field_has_a_range():
    import dataclasses

    from lgvq.experiment.config import ExperimentConfig

    for section in dataclasses.fields(ExperimentConfig):
        for f in dataclasses.fields(section.default_factory):
            if any(kind in str(f.type) for kind in ("int", "float")) or f.name in ("weights", "betas"):
                assert "low" in f.metadata, f"{section.name}.{f.name} has no range"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on a folder of images with .txt captions beside them (data.name=folder)."""
    root = tmp_path_factory.mktemp("images")
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (240, 240, 240)}
    for i, (name, rgb) in enumerate(list(colours.items()) * 2):
        Image.new("RGB", (48, 40), rgb).save(root / f"photo{i}.png")
        (root / f"photo{i}.txt").write_text(f"a {name} picture\nall {name}\n")
    out = tmp_path_factory.mktemp("folder-run") / "run"
    assert main(["train", "--set", "data.name=folder", "--set", f"data.root={root}", "--set", f"train.out_dir={out}",
                 *TINY]) == 0
    return out


def test_eval_on_a_folder_dataset_works_by_default_and_says_what_it_evaluates(folder_run, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(folder_run), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lgvq: warning: folder data has no held-out split: evaluating on the training images in ")
    assert json.loads(out.read_text())["psnr"] > 0


def test_eval_with_a_split_the_format_lacks_names_the_allowed_ones(folder_run, capsys):
    assert main(["eval", str(folder_run), "--split", "val"]) == 2
    assert _err(capsys) == (
        "lgvq eval: error: --split='val' is not a split of folder data: must be one of train (a folder has no "
        "splits: point data.root at each split's folder); pass --split train"
    )


@pytest.mark.minilm  # the task reads the captions with the default encoder
def test_text_to_image_without_fid_saves_its_samples_and_says_they_are_unscored(folder_run, tmp_path, capsys):
    samples, metrics = tmp_path / "t2i.png", tmp_path / "t2i.json"
    assert main(["task", "text-to-image", str(folder_run), "--steps", "2", "--split", "train",
                 "--samples", str(samples), "--json", str(metrics)]) == 0
    captured = capsys.readouterr()
    assert "lgvq: warning: text-to-image: its 8 generated images are unscored" in captured.err
    assert f"generated images → {samples}" in captured.out
    assert Image.open(samples).size == (8 * 34 + 2, 34 + 2)  # one row of 8 32x32 images, 2-pixel gaps
    assert {"train_loss", "test_nll", "seconds"} <= json.loads(metrics.read_text()).keys()


def test_unknown_task_is_named_before_anything_else(capsys):
    assert main(["task", "foo", "/no/such/run", "--split", "nope"]) == 2
    assert _err(capsys).startswith("lgvq task: error: unknown task 'foo'; valid names: reconstruction, ")


def test_nan_weights_make_eval_fail_naming_them(run_copy, capsys):
    weights = run_copy / "checkpoints" / "step_00000002" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.decoder.conv_out.weight"][0, 0, 0, 0] = float("nan")  # as a flipped exponent bit would
    save_file(tensors, str(weights))
    assert main(["eval", str(run_copy)]) == 2
    assert _err(capsys) == (f"lgvq eval: error: 1 weight tensor(s) of {run_copy} hold NaN or Inf "
                            "(model.decoder.conv_out.weight): its checkpoint is corrupt or the run diverged")


def test_nan_metrics_are_an_error(run_dir, monkeypatch, capsys):
    import lgvq.experiment.evaluate

    real = lgvq.experiment.evaluate.evaluate

    def overflowing(*args, **kwargs):
        result = real(*args, **kwargs)
        result.perplexity = float("nan")
        return result

    monkeypatch.setattr(lgvq.experiment.evaluate, "evaluate", overflowing)
    assert main(["eval", str(run_dir)]) == 2
    assert _err(capsys).endswith("lgvq eval: error: metrics are not finite (perplexity=nan): the model produces NaN "
                                 "or Inf on this data")


def test_eval_of_truncated_weights_names_the_file(run_copy, capsys):
    weights = run_copy / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["eval", str(run_copy)]) == 2
    err = _err(capsys)
    assert err.startswith(f"lgvq eval: error: {weights} is corrupt or truncated (SafetensorError: ")
    assert err.endswith("); there is no earlier loadable checkpoint")


def test_eval_without_latest_uses_the_newest_checkpoint_and_says_so(run_copy, capsys):
    (run_copy / "checkpoints" / "latest").unlink()
    assert main(["eval", str(run_copy)]) == 0
    ckpts = run_copy / "checkpoints"
    assert capsys.readouterr().err.startswith(f"lgvq: warning: {ckpts / 'latest'} is missing; using "
                                              f"{ckpts / 'step_00000002'}, the newest complete checkpoint\n")


def test_decode_of_a_file_that_is_not_codes_is_one_line(run_dir, tmp_path, capsys):
    bogus = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(bogus)
    assert main(["decode", str(run_dir), str(bogus), "--out", str(tmp_path / "d")]) == 2
    assert _err(capsys) == f"lgvq decode: error: {bogus} is not a codes file written by `lgvq encode` (UnpicklingError)"


def test_programming_errors_keep_their_traceback(monkeypatch):
    def buggy(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setitem(cli.COMMANDS, "eval", buggy)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["eval", "somewhere"])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--no-such-flag"]])
def test_help_and_argument_errors_import_no_torch(argv):
    probe = ("import sys\nfrom lgvq.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
