"""Shared helpers: the tiny training config every training test starts from, folder snapshots."""

from pathlib import Path

import pytest
import torch

from lgvq.experiment.config import load_config


def tiny_config(out_dir, *extra):
    """vqvae-tiny on 16 shapes, batches of 4, every step logged, a checkpoint every 2 steps."""
    return load_config(None, [
        f"train.out_dir={out_dir}", "train.log_every=1", "train.image_every=2", "train.ckpt_every=2",
        "train.tensorboard=false", "data.batch_size=4", "data.size=16", "optim.base_lr=1e-4", *extra,
    ])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: on a loaded 2-core machine a second intra-op thread costs more than it saves."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock, which only holds the last owner's PID) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run_weights(run) -> dict[str, torch.Tensor]:
    """Every module's state of a training run, keyed ``module.parameter``, as copies."""
    return {f"{m}.{k}": v.clone() for m, mod in run.modules().items() for k, v in mod.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys and the same bits under each (an exact resume or replay, not a close one)."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
