"""The main job, shortened: both models train, get evaluated, and the report is complete;
several seeds give mean ± sd and paired differences, and completed seeds are reused."""

import json
import shutil

import pytest

import lgvq.demo as demo
from lgvq.demo import CONFIGS, run_demo
from lgvq.tasks import TaskBudget

PICTURES = ["reconstructions.png", "codebook_usage.png", "word_code_similarity.png", "training_curves.png"]
TINY = dict(steps=2, probe_steps=2, eval_size=16, progress=False)
TINY_TASKS = TaskBudget(steps=3, batch_size=4, width=32, depth=1, heads=2, train_items=8, eval_items=4,
                        questions_per_image=1, classifier_steps=2, classifier_batch_size=4, beam_size=2,
                        meteor=False)


def test_demo_writes_a_complete_report(tmp_path):
    readme = run_demo(tmp_path, **TINY)
    text = readme.read_text()
    assert "Command: `lgvq demo --steps 2` ·" in text
    for label in CONFIGS:
        assert f"| {label} |" in text
    for picture in PICTURES:
        assert (tmp_path / picture).stat().st_size > 1000, picture
        assert f"({picture})" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["tasks"] is None
    assert set(metrics["models"]) == set(CONFIGS)
    for values in metrics["models"].values():
        assert 0 < values["usage_percent"] <= 100 and values["psnr"] > 0
        assert 0 <= values["recall@1_1word"] <= 100 and values["word_code_mse"] >= 0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY)


def test_several_seeds_report_spread_paired_difference_and_tasks(sweep):
    out, readme = sweep
    text = readme.read_text()
    plain, guided = CONFIGS
    assert "Command: `lgvq demo --steps 2 --seeds 0 1 --tasks` ·" in text
    assert f"| metric | {plain} | {guided} | {guided} − {plain} | {guided} better |" in text
    assert "| psnr ↑ |" in text and "| vqa / accuracy ↑ |" in text and "| captioning / cider ↑ |" in text
    seeds = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    psnr = [[s["models"][label]["psnr"] for s in seeds] for label in CONFIGS]
    assert psnr[0][0] != psnr[0][1], "two seeds gave the same model"
    mean, sd = sum(psnr[0]) / 2, abs(psnr[0][0] - psnr[0][1]) / 2 ** 0.5
    assert f"| psnr ↑ | {mean:.3f} ± {sd:.3f} |" in text
    for s in seeds:
        assert set(s["tasks"]) == set(CONFIGS) and "accuracy" in s["tasks"][guided]["vqa"]
    for picture in PICTURES:
        assert f"(seed-0/{picture})" in text and (out / "seed-0" / picture).is_file()


def test_completed_seeds_are_reused_and_changed_settings_rerun(sweep, monkeypatch):
    out, readme = sweep
    before = readme.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(demo, "train", no_training)
    again = run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY).read_text()
    strip = lambda t: [line for line in t.splitlines() if not line.startswith("Command:")]  # noqa: E731
    assert strip(again) == strip(before)
    with pytest.raises(AssertionError, match="trained again"):
        run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **{**TINY, "probe_steps": 3})
    edited = demo.demo_config

    def config_with_a_new_lr(*args):
        config = edited(*args)
        config.optim.base_lr *= 2
        return config

    monkeypatch.setattr(demo, "demo_config", config_with_a_new_lr)  # as if a YAML config were edited
    with pytest.raises(AssertionError, match="trained again"):
        run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY)


def test_a_task_missing_from_a_reused_seed_runs_on_its_saved_models(sweep, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    shutil.copytree(sweep[0], out)
    path = out / "seed-1" / "metrics.json"
    saved = json.loads(path.read_text())
    expected = {label: saved["tasks"][label].pop("vqa") for label in CONFIGS}  # as if vqa were new
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained again"))
    text = run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY).read_text()
    redone = json.loads(path.read_text())["tasks"]
    for label in CONFIGS:  # the saved models and the seed reproduce the original run's numbers
        assert redone[label]["vqa"]["accuracy"] == expected[label]["accuracy"]
    assert "| vqa / accuracy ↑ |" in text and "| vqa | accuracy |" in (out / "seed-1" / "README.md").read_text()


@pytest.mark.parametrize("seeds, error", [((), "at least one"), ((0, 0), "distinct"), ((0.5,), "ints")])
def test_bad_seeds_are_rejected(tmp_path, seeds, error):
    with pytest.raises((ValueError, TypeError), match=error):
        run_demo(tmp_path, seeds=seeds, **TINY)
