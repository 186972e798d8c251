"""Seed-paired comparison of two models: hand-made numbers with known statistics."""

import math

import pytest

from lgvq.experiment.comparison import Spread, compare, comparison_table, direction, flatten_tasks, unanimous_summary

PER_SEED = [
    {"A": {"psnr": 1.0, "test_nll": 2.0, "seconds": 5.0}, "B": {"psnr": 2.0, "test_nll": 1.0, "seconds": 3.0}},
    {"A": {"psnr": 3.0, "test_nll": 2.0, "seconds": 5.0}, "B": {"psnr": 3.0, "test_nll": 3.0, "seconds": 4.0}},
]


def test_spread_is_mean_and_sample_standard_deviation():
    s = Spread.of([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3) and s.n == 3
    assert s.sd == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert Spread.of([5.0]).sd is None and Spread.of([5.0]).format(1) == "5.0"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_direction_of_scores_and_non_scores():
    assert direction("psnr") == 1 and direction("vqa / accuracy") == 1 and direction("recall@1_3word") == 1
    assert direction("text-to-image / attribute_frechet_distance") == -1 and direction("word_code_mse") == -1
    assert direction("seconds") is None and direction("vqa / majority_baseline") is None


def test_paired_difference_and_wins_follow_each_metric_direction():
    rows = {r.metric: r for r in compare(PER_SEED, "A", "B")}
    psnr = rows["psnr"]
    assert (psnr.baseline.mean, psnr.candidate.mean) == (2.0, 2.5)
    assert psnr.difference.mean == 0.5 and psnr.difference.sd == pytest.approx(math.sqrt(0.5))
    assert psnr.wins == 1  # seed 1 is a tie, which is not a win
    nll = rows["test_nll"]
    assert nll.difference.mean == 0.0 and nll.wins == 1  # lower is better: B wins seed 0 only
    assert rows["seconds"].wins is None


def test_table_rows_read_as_expected():
    table = comparison_table(PER_SEED, "A", "B")
    assert "| psnr ↑ | 2.000 ± 1.414 | 2.500 ± 0.707 | +0.500 ± 0.707 | 1/2 |" in table
    assert "| test_nll ↓ | 2.000 ± 0.000 | 2.000 ± 1.414 | +0.000 ± 1.414 | 1/2 |" in table
    assert "| seconds | 5.000 ± 0.000 | 3.500 ± 0.707 | -1.500 ± 0.707 | — |" in table


def test_metrics_missing_or_not_finite_in_any_seed_are_left_out():
    per_seed = [{"A": {"x": 1.0, "y": 1.0}, "B": {"x": 1.0, "y": 1.0}},
                {"A": {"x": 1.0, "y": float("nan")}, "B": {"y": 2.0}}]
    assert [r.metric for r in compare(per_seed, "A", "B")] == []


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="non-empty list"):
        compare([], "A", "B")
    with pytest.raises(KeyError, match="no results for 'C'"):
        compare(PER_SEED, "A", "C")


def test_flatten_tasks_names_task_and_metric():
    assert flatten_tasks({"vqa": {"accuracy": 0.5}, "captioning": {"cider": 1.0}}) == {
        "vqa / accuracy": 0.5, "captioning / cider": 1.0}


def test_unanimous_summary_names_scores_won_or_lost_in_every_seed():
    per_seed = [{"A": {"psnr": 1.0, "ssim": 0.5, "cider": 9.0}, "B": {"psnr": 2.0, "ssim": 0.4, "cider": 9.0}},
                {"A": {"psnr": 1.0, "ssim": 0.5, "cider": 8.0}, "B": {"psnr": 3.0, "ssim": 0.3, "cider": 9.0}}]
    text = unanimous_summary(per_seed, "A", "B")
    assert "better than A in all 2 seeds on: psnr;" in text
    assert "worse in all 2 seeds on: ssim;" in text  # cider: a tie and a win, so mixed
    assert "probability 0.50" in text and "about 1.5 such scores" in text
    assert unanimous_summary(per_seed[:1], "A", "B").startswith("One seed")
