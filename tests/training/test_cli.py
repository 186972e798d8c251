"""The ``lgvq`` command: a short end-to-end flow, and bad arguments ending in clear errors."""

import json

import pytest
import torch
from PIL import Image

from lgvq.cli import main

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
    assert len(list((tmp_path / "dec").glob("*.png"))) == 2
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


def test_task_runs_on_a_trained_model(run_dir, capsys):
    assert main(["task", "vqa", str(run_dir), "--steps", "2"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["task", "painting", str(run_dir)]) == 2
    assert "unknown task 'painting'" in capsys.readouterr().err
    assert main(["task", "unconditional", str(run_dir), "--fid-weights", str(run_dir / "no-such.pth")]) == 2
    assert "Inception weights not found" in capsys.readouterr().err
