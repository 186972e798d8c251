"""Training loop: short runs per backbone ± guidance, exact resume, atomic checkpoints."""

import os

import pytest
import torch

import lgvq.experiment.checkpoint as checkpoint_mod
from lgvq.experiment.checkpoint import latest_checkpoint, load_weights, save_checkpoint
from lgvq.experiment.logger import read_log
from lgvq.experiment.run import build_run
from lgvq.experiment.train import adam, make_optimizers, train

from .conftest import assert_same_tensors, run_weights, tiny_config


@pytest.mark.parametrize("name", ["vqvae-tiny", "vqgan-tiny", "cvq-tiny"])
@pytest.mark.parametrize("guided", [False, True])
def test_two_steps_per_backbone(tmp_path, name, guided):
    config = tiny_config(tmp_path, f"model.name={name}", "train.steps=2", f"guidance.enabled={str(guided).lower()}",
                         "model.loss={disc_start: 1}" if name != "vqvae-tiny" else "model.loss={}")
    run = train(config, progress=False)
    logs = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 2
    assert (tmp_path / "images" / "step_00000002.png").is_file()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    assert (run.guidance is not None) == guided
    if guided:
        assert '"mtp"' in logs[-1] and '"ras"' in logs[-1]
    if name != "vqvae-tiny":
        assert '"disc_loss"' in logs[-1]  # the discriminator stepped at step 1
    for p in run.model.parameters():
        assert torch.isfinite(p).all()


def test_resume_continues_exactly(tmp_path):
    extra = ["model.name=vqgan-tiny", "model.loss={disc_start: 1}", "guidance.enabled=true",
             "model.overrides={dead_code_threshold: 0.5}"]
    straight = train(tiny_config(tmp_path / "a", "train.steps=4", *extra), progress=False)
    train(tiny_config(tmp_path / "b", "train.steps=2", *extra), progress=False)
    resumed = train(tiny_config(tmp_path / "b", "train.steps=4", *extra), resume=True, progress=False)
    assert_same_tensors(run_weights(straight), run_weights(resumed))


def _logged_steps(run_dir):
    return [r["step"] for r in read_log(run_dir / "metrics.jsonl")]


def test_log_has_each_step_once_after_resume_and_rerun(tmp_path):
    train(tiny_config(tmp_path, "train.steps=3", "train.ckpt_every=2"), progress=False)
    assert _logged_steps(tmp_path) == [1, 2, 3]
    # a resume from the step-2 checkpoint replaces step 3, which the first run had logged
    train(tiny_config(tmp_path, "train.steps=4", "train.ckpt_every=2"), resume=True, progress=False)
    assert _logged_steps(tmp_path) == [1, 2, 3, 4]
    train(tiny_config(tmp_path, "train.steps=2"), progress=False, existing="overwrite")  # a fresh run in its place
    assert _logged_steps(tmp_path) == [1, 2]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(tmp_path, "train.steps=2"), resume=True, progress=False)


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run = build_run(tiny_config(tmp_path))
    opt = {"ae": torch.optim.Adam(run.model.parameters())}
    save_checkpoint(tmp_path, 1, run.modules(), opt)
    before = run_weights(run)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(checkpoint_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, run.modules(), opt)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    fresh = build_run(tiny_config(tmp_path))
    load_weights(latest_checkpoint(tmp_path), fresh.modules())
    assert_same_tensors(run_weights(fresh), before)


def _adam_steps(optimizer, params, grads):
    for grad in grads:
        for p, g in zip(params, grad):
            p.grad = g.clone()
        optimizer.step()


def test_the_cpu_adam_is_fused_steps_like_torchs_default_and_resumes_an_unfused_state_unfused(tmp_path):
    """make_optimizers' Adam is torch's fused kernel on the CPU, with the config's lr and betas,
    and gives torch's default (single-tensor) Adam's updates to float rounding. A state_dict
    the default Adam saved (a checkpoint from before the change) loads, and the resumed run
    keeps the saved path: bit for bit the run that was never interrupted."""
    run = build_run(tiny_config(tmp_path, "guidance.enabled=true", "optim.base_lr=0.01", "optim.betas=[0.6,0.7]"))
    ae = make_optimizers(run)["ae"]
    expected = [p for p in run.model.parameters() if p.requires_grad] + list(run.guidance.parameters())
    assert ae.param_groups[0]["fused"] is True
    assert ae.param_groups[0]["betas"] == (0.6, 0.7) and ae.param_groups[0]["lr"] == pytest.approx(0.01 * 4)
    assert [id(p) for p in ae.param_groups[0]["params"]] == [id(p) for p in expected]
    torch.manual_seed(0)
    shapes = [(3, 5), (7,), (2, 3, 4)]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]
    start = [torch.randn(s) for s in shapes]
    lr, betas = ae.param_groups[0]["lr"], ae.param_groups[0]["betas"]

    reference = [p.clone().requires_grad_() for p in start]
    default = torch.optim.Adam(reference, lr=lr, betas=betas)
    _adam_steps(default, reference, grads)
    resumed = [p.clone().requires_grad_() for p in start]
    first = torch.optim.Adam(resumed, lr=lr, betas=betas)
    _adam_steps(first, resumed, grads[:2])
    fused = adam(resumed, lr=lr, betas=betas)
    fused.load_state_dict(first.state_dict())
    assert fused.param_groups[0]["fused"] is None
    _adam_steps(fused, resumed, grads[2:])
    straight = [p.clone().requires_grad_() for p in start]
    _adam_steps(adam(straight, lr=lr, betas=betas), straight, grads)
    for ref, res, fus in zip(reference, resumed, straight):
        assert torch.equal(res, ref)
        torch.testing.assert_close(fus, ref, rtol=1e-6, atol=1e-6)
