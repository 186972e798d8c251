"""The lr schedule: its values, its use by the training loop, and exact resumes under it."""

import math

import pytest

from lgvq.data import load_dataset
from lgvq.demo.report import schedule_text
from lgvq.demo.training import train_with_heldout_curve
from lgvq.experiment.config import ConfigError, OptimConfig
from lgvq.experiment.logger import read_log
from lgvq.experiment.lr_schedule import lr_factor
from lgvq.experiment.splits import dataset_args
from lgvq.experiment.train import train

from .conftest import assert_same_tensors, run_weights, tiny_config

COSINE = ["optim.lr_schedule=cosine", "optim.final_lr_ratio=0.2"]


def test_cosine_runs_from_one_to_the_final_ratio_and_stays_there():
    assert lr_factor("cosine", 0, 8, 0.2) == 1.0
    assert lr_factor("cosine", 2, 8, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 4, 8, 0.2) == pytest.approx(0.6)
    assert lr_factor("cosine", 6, 8, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 - math.cos(math.pi / 4)))
    assert lr_factor("cosine", 8, 8, 0.2) == pytest.approx(0.2)
    assert lr_factor("cosine", 11, 8, 0.2) == pytest.approx(0.2)
    assert [lr_factor("constant", s, 8, 0.2) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]


def test_unknown_schedule_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr_schedule='linear' is not allowed: must be one of constant, cosine"):
        tiny_config(tmp_path, "optim.lr_schedule=linear")
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        lr_factor("step", 0, 8, 0.2)


def test_training_follows_the_schedule_step_by_step(tmp_path):
    train(tiny_config(tmp_path, "train.steps=4", *COSINE), progress=False)
    lr0 = 1e-4 * 4  # base_lr x batch
    logged = [row["lr"] for row in read_log(tmp_path / "metrics.jsonl")]
    assert logged == pytest.approx([lr0 * lr_factor("cosine", s, 4, 0.2) for s in range(4)], rel=1e-12)
    assert logged[0] == pytest.approx(lr0) and logged[-1] < logged[1] < logged[0]


def test_constant_schedule_keeps_the_lr(tmp_path):
    train(tiny_config(tmp_path, "train.steps=3"), progress=False)
    assert [row["lr"] for row in read_log(tmp_path / "metrics.jsonl")] == [4e-4] * 3


def test_resume_under_a_cosine_schedule_continues_exactly(tmp_path):
    extra = [*COSINE, "optim.schedule_steps=4"]
    straight = train(tiny_config(tmp_path / "a", "train.steps=4", *extra), progress=False)
    train(tiny_config(tmp_path / "b", "train.steps=2", *extra), progress=False)
    resumed = train(tiny_config(tmp_path / "b", "train.steps=4", *extra), resume=True, progress=False)
    assert_same_tensors(run_weights(straight), run_weights(resumed))


def test_segmented_training_keeps_the_whole_runs_horizon(tmp_path):
    """The demo trains in segments (held-out PSNR between them); the schedule must not restart
    or shorten with each segment."""
    config = tiny_config(tmp_path / "a", "train.steps=5", *COSINE)
    val = load_dataset(**dataset_args(config, "test", 2))
    segmented, _ = train_with_heldout_curve(config, val, False)
    whole = train(tiny_config(tmp_path / "b", "train.steps=5", *COSINE), progress=False)
    assert_same_tensors(run_weights(segmented), run_weights(whole))


def test_the_demo_report_names_a_decaying_schedule_only():
    assert schedule_text(OptimConfig()) == ""
    assert schedule_text(OptimConfig(lr_schedule="cosine", final_lr_ratio=0.05)) == ", cosine decay to 0.05× of it over the run"
