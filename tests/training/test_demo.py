"""The main job, shortened: both models train, get evaluated, and the report is complete;
several seeds give mean ± sd and paired differences, and completed seeds are reused."""

import json
import platform
import shutil

import pytest
import torch

import lgvq.demo.settings
import lgvq.demo.training
from lgvq.demo import CONFIGS, run_demo
from lgvq.tasks import TaskBudget
from lgvq.threads import threads_per_process

PICTURES = ["reconstructions.png", "codebook_usage.png", "word_code_similarity.png", "training_curves.png"]
TINY = dict(steps=2, probe_steps=2, eval_size=16, progress=False, parallel=False)
TINY_TASKS = TaskBudget(steps=3, batch_size=4, width=32, depth=1, heads=2, train_items=8, eval_items=4,
                        questions_per_image=1, classifier_steps=2, classifier_batch_size=4, beam_size=2,
                        meteor=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The default demo (VQA and captioning), shortened, with both models in parallel processes."""
    out = tmp_path_factory.mktemp("single")
    return out, run_demo(out, task_budget=TINY_TASKS, **{**TINY, "parallel": True})


def test_demo_report_opens_with_the_verdict_and_has_the_task_rows(single):
    out, readme = single
    text = readme.read_text()
    title, blank, verdict = text.splitlines()[:3]
    assert title.startswith("# lgvq demo") and verdict == "## Verdict"
    assert "LG-VQ is ahead of plain VQ in this seed on" in text and "One seed cannot separate" in text
    for score in ("VQA accuracy", "captioning CIDEr", "held-out PSNR (dB)"):
        assert f"- **{score}**" in text
    assert "| vqa | accuracy |" in text and "| captioning | cider |" in text
    assert "| text-to-image |" not in text  # the default demo runs VQA and captioning only
    assert "Command: `lgvq demo --steps 2` ·" in text
    assert "train s (other processes used" in text  # the timing column states the load it ran under
    for label in CONFIGS:
        assert f"| {label} |" in text
    for picture in PICTURES:
        assert (out / picture).stat().st_size > 1000, picture
        assert f"({picture})" in text


def test_demo_metrics_are_consistent(single):
    out, readme = single
    text = readme.read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 0 and set(metrics["tasks"]) == set(CONFIGS)
    assert all(set(tasks) == {"vqa", "captioning"} for tasks in metrics["tasks"].values())
    threads = threads_per_process(len(CONFIGS))
    assert metrics["device"] == f"CPU (2 processes × {threads} thread{'s' if threads > 1 else ''}, {platform.machine()})"
    configs = metrics["settings"]["configs"]
    plain, guided = (configs[label] for label in CONFIGS)
    assert {k: v for k, v in plain.items() if k != "guidance"} == {k: v for k, v in guided.items() if k != "guidance"}
    assert not plain["guidance"]["enabled"] and guided["guidance"]["enabled"]  # they differ only by guidance
    for label, values in metrics["models"].items():
        assert f"| {label} | {values['psnr']:.2f} | {values['ssim']:.4f} |" in text
        used = values["usage_percent"] * 256 / 100  # a whole number of the K = 256 codes
        assert abs(used - round(used)) < 1e-6 and 1 <= round(used) <= 256
        hits = values["recall@1_1word"] * 16 / 100  # one masked word in each of 16 captions
        assert abs(hits - round(hits)) < 1e-6
        curve = metrics["heldout"][label]
        assert [p["step"] for p in curve] == [1, 2]
        # with 16 held-out images the curve's last point is the final evaluation itself
        assert curve[-1]["psnr"] == pytest.approx(values["psnr"], abs=1e-4)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds in turn in this process, on one thread like each parallel process."""
    out = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY)
    finally:
        torch.set_num_threads(threads)


def test_several_seeds_report_spread_paired_difference_and_tasks(sweep, single):
    out, readme = sweep
    text = readme.read_text()
    plain, guided = CONFIGS
    assert text.splitlines()[2] == "## Verdict" and "LG-VQ better in" in text
    assert "Command: `lgvq demo --steps 2 --seeds 0 1` ·" in text
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
    # seed 0 in turn in this process gives what the parallel processes gave: bit for bit where
    # each of them ran on one thread too, as on a 2-core machine (each job keeps its thread count)
    parallel = json.loads((single[0] / "metrics.json").read_text())
    same = (lambda a, b: a == b) if threads_per_process(len(CONFIGS)) == 1 else \
        (lambda a, b: a == pytest.approx(b, rel=1e-4))
    for label in CONFIGS:
        for key in ("psnr", "usage_percent", "word_code_mse"):
            assert same(seeds[0]["models"][label][key], parallel["models"][label][key]), (label, key)
        for task, key in (("vqa", "accuracy"), ("captioning", "cider")):
            assert same(seeds[0]["tasks"][label][task][key], parallel["tasks"][label][task][key]), (label, task)
        for ours, theirs in zip(seeds[0]["heldout"][label], parallel["heldout"][label], strict=True):
            assert same(ours["psnr"], theirs["psnr"]), (label, "held-out", ours["step"])


def test_completed_seeds_are_reused_and_changed_settings_rerun(sweep, monkeypatch):
    out, readme = sweep
    before = readme.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(lgvq.demo.training, "train", no_training)
    again = run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY).read_text()
    strip = lambda t: [line for line in t.splitlines() if not line.startswith("Command:")]  # noqa: E731
    assert strip(again) == strip(before)
    with pytest.raises(AssertionError, match="trained again"):
        run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **{**TINY, "probe_steps": 3})
    edited = lgvq.demo.settings.demo_config

    def config_with_a_new_lr(*args):
        config = edited(*args)
        config.optim.base_lr *= 2
        return config

    monkeypatch.setattr(lgvq.demo.settings, "demo_config", config_with_a_new_lr)  # as if a YAML config were edited
    with pytest.raises(AssertionError, match="trained again"):
        run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY)


def test_a_task_missing_from_a_reused_seed_runs_on_its_saved_models(sweep, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    shutil.copytree(sweep[0], out)
    path = out / "seed-1" / "metrics.json"
    saved = json.loads(path.read_text())
    expected = {label: saved["tasks"][label].pop("vqa") for label in CONFIGS}  # as if vqa were new
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(lgvq.demo.training, "train", lambda *a, **k: pytest.fail("trained again"))
    text = run_demo(out, seeds=(0, 1), task_budget=TINY_TASKS, **TINY).read_text()
    redone = json.loads(path.read_text())["tasks"]
    for label in CONFIGS:  # the saved models and the seed reproduce the original run's numbers
        assert redone[label]["vqa"]["accuracy"] == expected[label]["accuracy"]
    assert "| vqa / accuracy ↑ |" in text and "| vqa | accuracy |" in (out / "seed-1" / "README.md").read_text()


@pytest.mark.parametrize("seeds, error", [((), "at least one"), ((0, 0), "distinct"), ((0.5,), "ints")])
def test_bad_seeds_are_rejected(tmp_path, seeds, error):
    with pytest.raises((ValueError, TypeError), match=error):
        run_demo(tmp_path, seeds=seeds, **TINY)
