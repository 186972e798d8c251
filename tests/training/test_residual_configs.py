"""The shipped residual-VQ configs build an RQ-VAE (± language guidance on the summed codes) and
take a training step."""

import pytest
import torch

from lgvq.experiment.config import load_config
from lgvq.experiment.train import train
from lgvq.quantize import ResidualQuantizer


@pytest.mark.parametrize("name", ["shapes-rqvae", "shapes-rqvae-lg"])
def test_residual_config_trains_a_step(tmp_path, name):
    config = load_config(name, [
        f"train.out_dir={tmp_path}", "train.steps=1", "train.log_every=1", "train.image_every=1",
        "train.ckpt_every=1", "train.tensorboard=false", "data.batch_size=2", "data.size=8",
    ])
    run = train(config, progress=False)
    quantizer = run.model.quantize
    assert isinstance(quantizer, ResidualQuantizer) and quantizer.num_stages == 4
    assert (run.guidance is not None) == name.endswith("-lg")
    assert all(int(stage.step) == 1 for stage in quantizer.stages)  # every stage took its EMA step
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = run.model.eval()(x)
        assert out.indices.shape == (1, 8, 8, 4)
        torch.testing.assert_close(run.model.decode_indices(out.indices), out.x_rec)
