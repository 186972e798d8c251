"""The all-tasks driver on tiny data with a tiny budget: every task trains and reports."""

import math

import pytest
import torch

from lgvq.tasks import (
    TaskBudget,
    prepare_task_data,
    run_all_tasks,
    run_task,
    task_names,
)
from lgvq.threads import torch_threads


@pytest.fixture(scope="module")
def data(train_set, test_set, text_encoder, tiny_budget):
    return prepare_task_data(train_set, test_set, text_encoder, tiny_budget, seed=0)


def test_run_all_tasks_reports_finite_metrics_for_every_task(
    vq_model, train_set, test_set, text_encoder, data, tiny_budget
):
    results = run_all_tasks(
        vq_model, train_set, test_set, text_encoder, tiny_budget, seed=0, data=data
    )
    assert list(results) == task_names()
    for task, metrics in results.items():
        assert metrics and all(math.isfinite(v) for v in metrics.values()), task
    assert {"colour_recall", "shape_recall", "attribute_frechet_distance", "test_nll"} <= set(
        results["text-to-image"]
    )
    assert {"bleu4", "rouge_l", "cider"} <= set(results["captioning"])
    # accuracies are shares of the test questions: whole numbers of them, at most all
    questions = len(data.vqa_test)
    for key in ("accuracy", "majority_baseline"):
        correct = results["vqa"][key] * questions
        assert correct == pytest.approx(round(correct), abs=1e-4) and 0 <= round(correct) <= questions, key
    assert "psnr_lower" in results["completion"]
    assert {"layout_iou", "shape_recall", "test_nll"} <= set(results["semantic-synthesis"])
    assert results["reconstruction"]["real_layout_iou"] > 0.7  # the metric agrees with real images


def test_run_task_is_reproducible(vq_model, train_set, test_set, text_encoder, data, tiny_budget):
    first = run_task(
        "vqa", vq_model, train_set, test_set, text_encoder, tiny_budget, seed=3, data=data
    )
    second = run_task(
        "vqa", vq_model, train_set, test_set, text_encoder, tiny_budget, seed=3, data=data
    )
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_bad_task_requests_are_rejected(vq_model, train_set, test_set, text_encoder, data, tiny_budget):
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        run_task(
            "segmentation", vq_model, train_set, test_set, text_encoder, tiny_budget, data=data
        )
    with pytest.raises(TypeError, match="budget must be a TaskBudget"):
        run_task("vqa", vq_model, train_set, test_set, text_encoder, {"steps": 3}, data=data)
    with pytest.raises(TypeError, match="train_set must be a captioned dataset"):
        prepare_task_data([1, 2], test_set, text_encoder, tiny_budget)
    with pytest.raises(ValueError, match="prepared for other datasets"):
        run_task("vqa", vq_model, test_set, train_set, text_encoder, tiny_budget, data=data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps must be > 0"),
        (dict(width=30, heads=4), "divisible by heads"),
        (dict(top_p=0.0), "top_p"),
        (dict(eval_items=1), "eval_items must be >= 2"),
        (dict(threads=0), "threads must be > 0"),
    ],
)
def test_bad_budgets_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskBudget(**kwargs)


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
