"""The shipped IBQ and LFQ configs (plain and language-guided) build and take training steps."""

import json

import pytest
import torch

from lgvq.compat import LFQ, IndexPropagationQuantize
from lgvq.config import load_config
from lgvq.train import train

CONFIGS = {
    "shapes-ibq": (IndexPropagationQuantize, False),
    "shapes-ibq-lg": (IndexPropagationQuantize, True),
    "shapes-lfq": (LFQ, False),
    "shapes-lfq-lg": (LFQ, True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_trains(tmp_path, name):
    quantizer, guided = CONFIGS[name]
    config = load_config(name, [
        f"train.out_dir={tmp_path}", "train.steps=2", "train.log_every=1", "train.image_every=2",
        "train.ckpt_every=2", "train.tensorboard=false", "data.batch_size=4", "data.size=8", "data.eval_size=8",
    ])
    run = train(config, progress=False)
    assert isinstance(run.model.quantize, quantizer)
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 2
    for entry in logs:
        assert 0 < entry["usage"] <= 1 and entry["perplexity"] >= 1
        assert ("ras" in entry) == guided
    for p in run.model.parameters():
        assert torch.isfinite(p).all()
