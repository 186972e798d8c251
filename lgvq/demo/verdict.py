"""The verdict: on which scores LG-VQ is ahead of plain VQ in every seed, with both models' scores
and the paired difference."""

from __future__ import annotations

from lgvq.demo.settings import CONFIGS
from lgvq.experiment.comparison import Spread, direction, flatten_tasks, format_signed


#: The verdict's scores: (label, where in a seed's flat metrics, digits).
VERDICT_SCORES = (
    ("VQA accuracy", "vqa / accuracy", 3),
    ("captioning CIDEr", "captioning / cider", 1),
    ("captioning BLEU-4", "captioning / bleu4", 1),
    ("word–code MSE (probe)", "word_code_mse", 4),
    ("masked-word recall@1 (probe, %)", "recall@1_1word", 1),
    ("codebook usage (%)", "usage_percent", 1),
    ("held-out PSNR (dB)", "psnr", 2),
)
MULTI_SEED_RESULTS = "results/"


def flat_scores(seed_metrics: dict, label: str) -> dict[str, float]:
    """A seed's model scores and task scores ("task / metric") as one flat dict."""
    scores = dict(seed_metrics["models"][label])
    scores.update(flatten_tasks((seed_metrics.get("tasks") or {}).get(label, {})))
    return scores


def verdict_lines(per_seed: list[dict]) -> list[str]:
    """One line per verdict score: both models and LG − plain (mean ± sd and wins over seeds)."""
    plain, guided = CONFIGS
    flat = [{label: flat_scores(m, label) for label in CONFIGS} for m in per_seed]
    n = len(flat)
    lines = []
    for name, key, digits in VERDICT_SCORES:
        if not all(key in seed[label] for seed in flat for label in CONFIGS):
            continue
        sign = direction(key)
        a = [seed[plain][key] for seed in flat]
        b = [seed[guided][key] for seed in flat]
        diff = Spread.of([y - x for x, y in zip(a, b)])
        wins = sum(sign * (y - x) > 0 for x, y in zip(a, b))
        better = "higher" if sign > 0 else "lower"
        line = (f"- **{name}** ({better} is better): {guided} {Spread.of(b).format(digits)} vs {plain} "
                f"{Spread.of(a).format(digits)}, difference {format_signed(diff, digits)}")
        lines.append(line + (f"; LG-VQ better in {wins}/{n} seeds" if n > 1 else ""))
    return lines


def winners(per_seed: list[dict]) -> tuple[list[str], list[str]]:
    """Verdict scores on which LG-VQ is better / worse in every seed."""
    plain, guided = CONFIGS
    flat = [{label: flat_scores(m, label) for label in CONFIGS} for m in per_seed]
    ahead, behind = [], []
    for name, key, _ in VERDICT_SCORES:
        if not all(key in seed[label] for seed in flat for label in CONFIGS):
            continue
        diffs = [direction(key) * (seed[guided][key] - seed[plain][key]) for seed in flat]
        if all(d > 0 for d in diffs):
            ahead.append(name)
        elif all(d < 0 for d in diffs):
            behind.append(name)
    return ahead, behind


def verdict(per_seed: list[dict]) -> list[str]:
    ahead, behind = winners(per_seed)
    n = len(per_seed)
    scope = "in this seed" if n == 1 else f"in all {n} seeds"
    head = (f"LG-VQ is ahead of plain VQ {scope} on {', '.join(ahead) or 'none of the scores below'}"
            f"{'; behind on ' + ', '.join(behind) if behind else ''}.")
    if n == 1:
        sure = ("One seed cannot separate a real difference from seed-to-seed noise: compare with the paired "
                f"differences over 5 seeds committed in the repository's `{MULTI_SEED_RESULTS}` folder (README: "
                "“Downstream tasks”), or run `lgvq demo --seeds 0 1 2 3 4`.")
    else:
        sure = (f"A score better in all {n} paired seeds has probability {2 * 0.5 ** n:.2f} under no real "
                "difference (sign test); the ± is the seed-to-seed standard deviation.")
    return ["## Verdict", "", head + " " + sure, "", *verdict_lines(per_seed)]
