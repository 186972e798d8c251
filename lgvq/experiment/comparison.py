"""Two models compared over several seeds: mean ± standard deviation, and the paired difference.

A seed fixes everything the two models share (initial weights, data order, the task
networks' initialisation and sampling), so seeds pair the runs: the per-seed difference
``candidate − baseline`` is the fair statistic, and "better in k/n" counts the seeds where
the candidate wins in the metric's own direction. Sample standard deviations (n − 1).

    per_seed = [{"VQ": {"psnr": 19.2}, "LG": {"psnr": 19.4}}, ...]   # one dict per seed
    print(comparison_table(per_seed, baseline="VQ", candidate="LG"))
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Scores, by the direction in which they improve. Anything else (seconds, a majority-class
# baseline, the classifier's recall on real images) is shown but not called better or worse.
HIGHER_IS_BETTER = {
    "psnr", "ssim", "usage_percent", "perplexity", "colour_recall", "shape_recall", "psnr_lower",
    "accuracy", "bleu4", "rouge_l", "cider", "meteor", "layout_iou",
}
LOWER_IS_BETTER = {"word_code_mse", "fid", "train_loss", "test_nll", "attribute_frechet_distance"}
ARROWS = {1: " ↑", -1: " ↓", None: ""}


def direction(metric: str) -> int | None:
    """+1 if a higher value is better, -1 if lower is, None if the value is not a score.
    ``metric`` may carry a ``"task / "`` prefix."""
    name = metric.rsplit(" / ", 1)[-1]
    if name in HIGHER_IS_BETTER or name.startswith("recall@1_"):
        return 1
    if name in LOWER_IS_BETTER:
        return -1
    return None


@dataclass(frozen=True)
class Spread:
    mean: float
    sd: float | None  # None for a single value
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        values = [float(v) for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), sd, len(values))

    def format(self, digits: int) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline: Spread
    candidate: Spread
    difference: Spread  # candidate − baseline, paired by seed
    wins: int | None  # seeds where the candidate is strictly better; None if not a score
    losses: int | None  # seeds where the baseline is strictly better

    @property
    def n(self) -> int:
        return self.difference.n


def compare(per_seed: list[dict[str, dict[str, float]]], baseline: str, candidate: str) -> list[MetricComparison]:
    """One comparison per metric that both models report in every seed, in first-seed order."""
    _check_per_seed(per_seed, baseline, candidate)
    first = per_seed[0][baseline]
    metrics = [
        m for m in first
        if all(m in seed[baseline] and m in seed[candidate] for seed in per_seed)
        and all(math.isfinite(seed[label][m]) for seed in per_seed for label in (baseline, candidate))
    ]
    rows = []
    for metric in metrics:
        a = [seed[baseline][metric] for seed in per_seed]
        b = [seed[candidate][metric] for seed in per_seed]
        sign = direction(metric)
        wins = None if sign is None else sum(sign * (y - x) > 0 for x, y in zip(a, b))
        losses = None if sign is None else sum(sign * (y - x) < 0 for x, y in zip(a, b))
        rows.append(MetricComparison(
            metric, Spread.of(a), Spread.of(b), Spread.of([y - x for x, y in zip(a, b)]), wins, losses
        ))
    return rows


def _check_per_seed(per_seed, baseline: str, candidate: str) -> None:
    if not isinstance(per_seed, list) or not per_seed:
        raise ValueError("per_seed must be a non-empty list with one {model: {metric: value}} per seed")
    for i, seed in enumerate(per_seed):
        for label in (baseline, candidate):
            if label not in seed:
                raise KeyError(f"per_seed[{i}] has no results for {label!r} (has {sorted(seed)})")


def comparison_table(per_seed: list[dict[str, dict[str, float]]], baseline: str, candidate: str,
                     digits: int = 3) -> str:
    """A markdown table: metric, each model's mean ± sd, the paired difference and the wins."""
    rows = compare(per_seed, baseline, candidate)
    n = len(per_seed)
    lines = [
        f"| metric | {baseline} | {candidate} | {candidate} − {baseline} | {candidate} better |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        wins = "—" if row.wins is None else f"{row.wins}/{n}"
        lines.append(
            f"| {row.metric}{ARROWS[direction(row.metric)]} | {row.baseline.format(digits)} | "
            f"{row.candidate.format(digits)} | {format_signed(row.difference, digits)} | {wins} |"
        )
    return "\n".join(lines)


def unanimous_summary(per_seed: list[dict[str, dict[str, float]]], baseline: str, candidate: str) -> str:
    """One sentence naming the scores on which the candidate is better, or worse, in every seed.

    With n paired seeds, "every seed" has probability 2 · 0.5^n under no difference (a sign
    test); everything else is called mixed rather than read as a trend.
    """
    n = len(per_seed)
    if n < 2:
        return "One seed: no metric can be called consistently better or worse."
    rows = [r for r in compare(per_seed, baseline, candidate) if r.wins is not None]
    better = [r.metric for r in rows if r.wins == n]
    worse = [r.metric for r in rows if r.losses == n]
    return (
        f"{candidate} is better than {baseline} in all {n} seeds on: {', '.join(better) or 'nothing'}; "
        f"worse in all {n} seeds on: {', '.join(worse) or 'nothing'}; every other score is mixed across seeds. "
        f"(Under no real difference, one score comes out the same way in all {n} seeds with probability "
        f"{2 * 0.5 ** n:.2f}, and {len(rows)} scores are compared, so expect about {len(rows) * 2 * 0.5 ** n:.1f} "
        "such scores by chance.)"
    )


def format_signed(spread: Spread, digits: int) -> str:
    text = spread.format(digits)
    return text if text.startswith("-") else "+" + text


def flatten_tasks(tasks: dict[str, dict[str, float]]) -> dict[str, float]:
    """{task: {metric: v}} → {"task / metric": v}, for ``compare``."""
    return {f"{task} / {metric}": value for task, metrics in tasks.items() for metric, value in metrics.items()}
