"""The main job, shortened: both models train, get evaluated, and the report is complete."""

import json

from lgvq.demo import CONFIGS, run_demo


def test_demo_writes_a_complete_report(tmp_path):
    readme = run_demo(tmp_path, steps=2, probe_steps=2, eval_size=16, progress=False)
    text = readme.read_text()
    for label in CONFIGS:
        assert f"| {label} |" in text
    for picture in ["reconstructions.png", "codebook_usage.png", "word_code_similarity.png", "training_curves.png"]:
        assert (tmp_path / picture).stat().st_size > 1000, picture
        assert f"({picture})" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == set(CONFIGS)
    for values in metrics.values():
        assert 0 < values["usage_percent"] <= 100 and values["psnr"] > 0
        assert 0 <= values["recall@1_1word"] <= 100 and values["word_code_mse"] >= 0
